"""Static checks of docker/ (no Docker engine, no network): the compose stack, the Dockerfile, its
build-context filter and .env.example.

Each ``check_*`` function returns a list of problems (empty when all is well) so that the same
checker runs on the real files and, in the negative tests at the bottom, on mutated copies that
it must reject.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
ENV_EXAMPLE = DOCKER / ".env.example"

REQUIRED_SERVICES = ("postgres", "mlflow", "ray-head", "ray-worker", "study")
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET")
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
# What the image may take from the build context (README: pyproject.toml + the package + data).
ALLOWED_COPY_SOURCES = {"pyproject.toml", "README.md", "pal_study", "search_spaces", "studies"}
# Images whose exact versions have three parts (3.11.13, 12.8.1); others (postgres 15.13) two.
THREE_PART_VERSION_IMAGES = {"python", "nvidia/cuda", "ghcr.io/mlflow/mlflow", "rayproject/ray"}
LOOPBACK = ("127.0.0.1", "[::1]")
PLACEHOLDER_SECRETS = {"", "change-me"}


# --------------------------------------------------------------------------------------------
# Interpolation (compose ${VAR:-default} / Dockerfile ARG defaults)
# --------------------------------------------------------------------------------------------

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_REQUIRED_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\?[^}]*\}")


def interpolate(s: str, env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """Substitute ``${X}``, ``$X``, ``${X:-d}``, ``${X-d}`` from ``env`` (else the default, else
    ""); returns the result and the names that had neither a value nor a default."""
    env = env or {}
    unresolved: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        op, word = m.group(2), m.group(3)
        if name in env and (env[name] != "" or op not in (":-", ":?")):
            return env[name]
        if op in (":-", "-"):
            return word or ""
        unresolved.append(name)
        return ""

    return _REF.sub(sub, s.replace("$$", "\0")).replace("\0", "$"), unresolved


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """``registry/name:tag@sha256:...`` -> (name, tag, digest)."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    name, tag = ref, None
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    return name, tag, digest


def image_problem(ref: str, where: str) -> str | None:
    """None if ``ref`` names an exact version (or a digest), else what is wrong with it."""
    if not ref or "$" in ref:
        return f"{where}: image {ref!r} is not a literal reference after interpolation"
    name, tag, digest = split_image(ref)
    if digest:
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else f"{where}: bad digest in {ref!r}"
    if tag is None:
        return f"{where}: image {ref!r} has no tag (a bare name floats to latest)"
    if tag == "latest":
        return f"{where}: image {ref!r} uses the floating tag 'latest'"
    parts = 3 if name.removeprefix("docker.io/").removeprefix("library/") in THREE_PART_VERSION_IMAGES else 2
    if not re.match(r"^v?\d+" + r"\.\d+" * (parts - 1) + r"(?!\d)", tag):
        return (
            f"{where}: image {ref!r} is not pinned to an exact version tag "
            f"(want {parts} version components, e.g. {'3.11.13' if parts == 3 else '15.13'})"
        )
    return None


# --------------------------------------------------------------------------------------------
# Compose checks
# --------------------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def env_items(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str | None] = {}
        for item in env:
            k, sep, v = str(item).partition("=")
            out[k] = v if sep else None
        return out
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def _strings(node: Any, path: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _cmd(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def check_services(c: dict[str, Any]) -> list[str]:
    services = c.get("services") or {}
    return [f"compose: service {name!r} is missing" for name in REQUIRED_SERVICES if name not in services]


def check_images(c: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in (c.get("services") or {}).items():
        ref = svc.get("image")
        if ref is None:
            if "build" not in svc:
                problems.append(f"compose: service {name!r} has neither image nor build")
            else:
                problems.append(f"compose: service {name!r} builds without an 'image:' name:tag to tag it with")
            continue
        resolved, unresolved = interpolate(str(ref))
        if unresolved:
            problems.append(f"compose: service {name!r} image {ref!r} depends on {unresolved} with no default")
            continue
        if (p := image_problem(resolved, f"compose service {name!r}")) is not None:
            problems.append(p)
    return problems


def check_ports(c: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in (c.get("services") or {}).items():
        if svc.get("network_mode") == "host":
            problems.append(
                f"compose: service {name!r} uses network_mode: host (publishes every port on every interface)"
            )
        for entry in svc.get("ports") or []:
            if isinstance(entry, dict):
                host_ip = interpolate(str(entry.get("host_ip", "")))[0]
                if host_ip not in LOOPBACK:
                    problems.append(
                        f"compose: service {name!r} port {entry} binds host_ip {host_ip or '(all interfaces)'!r}, "
                        "not 127.0.0.1"
                    )
                continue
            raw = str(entry)
            resolved = interpolate(raw)[0]
            host_ip = next((lb for lb in LOOPBACK if resolved.startswith(lb + ":")), None)
            if host_ip is None:
                first = resolved.split(":")[0] if resolved.count(":") >= 2 else ""
                problems.append(
                    f"compose: service {name!r} port {raw!r} binds "
                    f"{first or 'all interfaces (no host address)'!s}; publish it as "
                    "'127.0.0.1:HOST:CONTAINER' or '${BIND_ADDRESS:-127.0.0.1}:HOST:CONTAINER'"
                )
            elif resolved[len(host_ip) + 1 :].count(":") != 1:
                problems.append(f"compose: service {name!r} port {raw!r} is not HOST_IP:HOST_PORT:CONTAINER_PORT")
    return problems


def _is_required_ref(value: str) -> bool:
    return _REQUIRED_REF.fullmatch(value) is not None


def check_secrets(c: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in (c.get("services") or {}).items():
        for key, value in env_items(svc).items():
            if not any(w in key.upper() for w in SECRET_WORDS):
                continue
            if value is None:
                continue  # passed through from the caller's environment
            if not _is_required_ref(value):
                problems.append(
                    f"compose: service {name!r} environment {key}={value!r} is not a bare "
                    "${VAR:?message} reference (a literal or a default would put a secret in the file)"
                )
        build = svc.get("build")
        if isinstance(build, dict):
            args = build.get("args") or {}
            keys = [str(a).partition("=")[0] for a in args] if isinstance(args, list) else list(args)
            for key in keys:
                if any(w in key.upper() for w in SECRET_WORDS):
                    problems.append(
                        f"compose: service {name!r} passes build arg {key} (build args stay in the image history)"
                    )
    for path, s in _strings(c):
        # scheme://user:password@host with a literal password
        for m in re.finditer(r"[a-z][a-z0-9+.-]*://[^\s/@:]+:([^\s/@]+)@", s):
            if not _is_required_ref(m.group(1)):
                problems.append(f"compose: {path} embeds a password in a URL: {s!r}")
        for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-+])", s):
            if any(w in m.group(1).upper() for w in SECRET_WORDS):
                problems.append(f"compose: {path} gives the secret {m.group(1)} a default/alternative value: {s!r}")
    return problems


def check_gpu_workers(c: dict[str, Any]) -> list[str]:
    svc = (c.get("services") or {}).get("ray-worker") or {}
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    gpu = [d for d in devices if "gpu" in (d.get("capabilities") or [])]
    if not gpu:
        return ["compose: ray-worker reserves no GPU (deploy.resources.reservations.devices with capabilities: [gpu])"]
    if not any(d.get("driver") == "nvidia" for d in gpu):
        return ["compose: ray-worker's GPU reservation does not name driver: nvidia"]
    if "replicas" not in (svc.get("deploy") or {}):
        return ["compose: ray-worker has no deploy.replicas (the number of workers should be settable)"]
    return []


def check_healthchecks(c: dict[str, Any]) -> list[str]:
    services = c.get("services") or {}
    want = {"postgres": "pg_isready", "mlflow": "/health", "ray-head": ""}
    problems = []
    for name, needle in want.items():
        hc = (services.get(name) or {}).get("healthcheck") or {}
        test = " ".join(_cmd(hc.get("test")))
        if not test or hc.get("disable") or test.startswith("NONE"):
            problems.append(f"compose: service {name!r} has no healthcheck")
        elif needle not in test:
            problems.append(f"compose: service {name!r} healthcheck {test!r} does not use {needle!r}")
    return problems


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """container path -> source, for short and long volume syntax."""
    out = {}
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            out[str(v.get("target"))] = str(v.get("source"))
        else:
            parts = str(v).split(":")
            if len(parts) >= 2:
                out[parts[1]] = parts[0]
    return out


def _depends(svc: dict[str, Any]) -> dict[str, str]:
    dep = svc.get("depends_on") or {}
    if isinstance(dep, list):
        return {d: "service_started" for d in dep}
    return {k: (v or {}).get("condition", "service_started") for k, v in dep.items()}


def check_wiring(c: dict[str, Any]) -> list[str]:
    """Postgres -> MLflow -> study; Ray token auth; one runs/ volume on driver and nodes."""
    services = c.get("services") or {}
    volumes = c.get("volumes") or {}
    problems = []
    pg = services.get("postgres") or {}
    if not str(env_items(pg).get("POSTGRES_PASSWORD")).startswith("${POSTGRES_PASSWORD:?"):
        problems.append("compose: postgres POSTGRES_PASSWORD is not ${POSTGRES_PASSWORD:?message}")
    pg_data = _mounts(pg).get("/var/lib/postgresql/data")
    if pg_data not in volumes:
        problems.append(f"compose: postgres data ({pg_data!r}) is not a named volume")
    ml = services.get("mlflow") or {}
    cmd = _cmd(ml.get("command"))
    if _depends(ml).get("postgres") != "service_healthy":
        problems.append("compose: mlflow does not wait for postgres to be healthy")
    uri = cmd[cmd.index("--backend-store-uri") + 1] if "--backend-store-uri" in cmd else ""
    if not uri.startswith("postgresql") or "@postgres:5432/" not in uri:
        problems.append(f"compose: mlflow --backend-store-uri {uri!r} is not the postgres service")
    dest = cmd[cmd.index("--artifacts-destination") + 1] if "--artifacts-destination" in cmd else None
    if dest is None or _mounts(ml).get(dest) not in volumes:
        problems.append(f"compose: mlflow --artifacts-destination {dest!r} is not on a named volume")
    for name in ("ray-head", "ray-worker", "study"):
        env = env_items(services.get(name) or {})
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"compose: {name} does not set RAY_AUTH_MODE=token")
        if not _is_required_ref(str(env.get("RAY_AUTH_TOKEN"))):
            problems.append(f"compose: {name} RAY_AUTH_TOKEN is not ${{RAY_AUTH_TOKEN:?message}}")
    head_cmd = _cmd((services.get("ray-head") or {}).get("entrypoint")) + _cmd(
        (services.get("ray-head") or {}).get("command")
    )
    if not {"start", "--head", "--block"} <= set(head_cmd) or "--port=6379" not in head_cmd:
        problems.append(f"compose: ray-head does not run 'ray start --head --port=6379 --block': {head_cmd}")
    worker_cmd = _cmd((services.get("ray-worker") or {}).get("command"))
    if "--address=ray-head:6379" not in worker_cmd or "--block" not in worker_cmd:
        problems.append(f"compose: ray-worker does not join ray-head:6379 with --block: {worker_cmd}")
    study = services.get("study") or {}
    if not study.get("profiles") and str(study.get("restart", "no")) != "no":
        problems.append("compose: study is not one-shot (no profile, restart not 'no')")
    scmd = _cmd(study.get("command"))
    for want in (["--address", "ray-head:6379"], ["--tracking-uri", "http://mlflow:5000"]):
        if not any(scmd[i : i + 2] == want for i in range(len(scmd))):
            problems.append(f"compose: study command {scmd} lacks {' '.join(want)}")
    if "run" not in scmd or not any(a.startswith("studies/") for a in scmd):
        problems.append(f"compose: study command {scmd} does not run a study from studies/")
    deps = _depends(study)
    for dep in ("ray-head", "mlflow"):
        if deps.get(dep) != "service_healthy":
            problems.append(f"compose: study does not wait for {dep} to be healthy")
    runs = {name: _mounts(services.get(name) or {}).get("/app/runs") for name in ("ray-head", "ray-worker", "study")}
    if len(set(runs.values())) != 1 or next(iter(runs.values())) not in volumes:
        problems.append(f"compose: runs/ is not one named volume at /app/runs on the driver and every Ray node: {runs}")
    return problems


COMPOSE_CHECKS = (
    check_services,
    check_images,
    check_ports,
    check_secrets,
    check_gpu_workers,
    check_healthchecks,
    check_wiring,
)


def compose_problems(c: dict[str, Any]) -> list[str]:
    return [p for check in COMPOSE_CHECKS for p in check(c)]


# --------------------------------------------------------------------------------------------
# Dockerfile checks
# --------------------------------------------------------------------------------------------


@dataclass
class Instr:
    cmd: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    instrs: list[Instr] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and the stages, continuation lines joined."""
    instrs: list[Instr] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if s.startswith("#") or (not s and not buf):
            continue
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        cmd, _, args = buf.strip().partition(" ")
        instrs.append(Instr(cmd.upper(), args.strip(), start))
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instrs:
        if ins.cmd == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, ins.line))
        elif not stages:
            if ins.cmd == "ARG":
                k, _, v = ins.args.partition("=")
                global_args[k.strip()] = v.strip().strip('"')
        else:
            stages[-1].instrs.append(ins)
    return global_args, stages


def resolve_from(
    stage: Stage, global_args: dict[str, str], overrides: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    return interpolate(stage.base, {**global_args, **(overrides or {})})


def stage_chain(
    stages: list[Stage], stage: Stage, global_args: dict[str, str], overrides: dict[str, str] | None = None
) -> list[Stage]:
    """The stage and the earlier stages it is built FROM, base first."""
    names = {s.name: s for s in stages if s.name}
    chain = [stage]
    while True:
        base = resolve_from(chain[0], global_args, overrides)[0]
        if base in names and names[base] is not chain[0]:
            chain.insert(0, names[base])
        else:
            return chain


def check_dockerfile_bases(text: str, variants: tuple[str, ...] = ("cuda", "cpu")) -> list[str]:
    global_args, stages = parse_dockerfile(text)
    if not stages:
        return ["Dockerfile: no FROM"]
    problems = []
    if global_args.get("VARIANT") != "cuda":
        problems.append(f"Dockerfile: ARG VARIANT should default to cuda, not {global_args.get('VARIANT')!r}")
    for variant in variants:
        seen: set[str] = set()
        for st in stages:
            base, unresolved = resolve_from(st, global_args, {"VARIANT": variant})
            where = f"Dockerfile line {st.line} (FROM {st.base}, VARIANT={variant})"
            if unresolved:
                problems.append(f"{where}: {unresolved} has no ARG default before the first FROM")
            elif base not in seen and (p := image_problem(base, where)) is not None:
                problems.append(p)
            if st.name:
                seen.add(st.name)
    return sorted(set(problems))


def _env_keys(ins: Instr) -> list[str]:
    if ins.cmd == "ARG":
        return [ins.args.partition("=")[0].strip()]
    if "=" not in ins.args.split()[0]:  # legacy ENV KEY value
        return [ins.args.split()[0]]
    return [tok.partition("=")[0] for tok in shlex.split(ins.args)]


def check_dockerfile_secrets(text: str) -> list[str]:
    global_args, stages = parse_dockerfile(text)
    problems = [
        f"Dockerfile: global ARG {k} looks like a secret (build args stay in the image history)"
        for k in global_args
        if any(w in k.upper() for w in SECRET_WORDS)
    ]
    for st in stages:
        for ins in st.instrs:
            if ins.cmd in ("ENV", "ARG"):
                for key in _env_keys(ins):
                    if any(w in key.upper() for w in SECRET_WORDS):
                        problems.append(f"Dockerfile line {ins.line}: {ins.cmd} {key} bakes a secret into the image")
    return problems


def _copy_sources(ins: Instr) -> tuple[list[str], dict[str, str]]:
    flags: dict[str, str] = {}
    rest = ins.args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        k, _, v = flag[2:].partition("=")
        flags[k] = v
        rest = rest.strip()
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return words[:-1], flags


def check_dockerfile_copies(text: str) -> list[str]:
    _, stages = parse_dockerfile(text)
    problems = []
    for st in stages:
        for ins in st.instrs:
            if ins.cmd not in ("COPY", "ADD"):
                continue
            sources, flags = _copy_sources(ins)
            if "from" in flags:
                continue  # from another stage or image, not the build context
            if ins.cmd == "ADD":
                problems.append(f"Dockerfile line {ins.line}: ADD {ins.args!r}; use COPY for context files")
            for src in sources:
                norm = src.removeprefix("./").rstrip("/")
                if ".env" in Path(norm).name or norm not in ALLOWED_COPY_SOURCES:
                    problems.append(
                        f"Dockerfile line {ins.line}: copies {src!r} from the build context; "
                        f"only {sorted(ALLOWED_COPY_SOURCES)} belong in the image"
                    )
    return problems


def _final_and_targets(stages: list[Stage], targets: tuple[str, ...]) -> list[Stage]:
    named = {s.name: s for s in stages if s.name}
    return [stages[-1]] + [named[t] for t in targets if t in named and named[t] is not stages[-1]]


def check_dockerfile_user(text: str, targets: tuple[str, ...] = ()) -> list[str]:
    global_args, stages = parse_dockerfile(text)
    problems = []
    if not stages:
        return ["Dockerfile: no FROM"]
    problems += [
        f"Dockerfile: compose builds target {t!r}, which is not a stage"
        for t in targets
        if t not in {s.name for s in stages}
    ]
    for st in _final_and_targets(stages, targets):
        users = [i.args for s in stage_chain(stages, st, global_args) for i in s.instrs if i.cmd == "USER"]
        label = st.name or f"line {st.line}"
        if not users:
            problems.append(f"Dockerfile stage {label}: no USER, so it runs as root")
        elif users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"Dockerfile stage {label}: USER {users[-1]} is root")
        elif not any(
            i.cmd == "RUN" and re.search(r"useradd\b.*--uid 1000\b|useradd\b.*-u 1000\b", i.args)
            for s in stage_chain(stages, st, global_args)
            for i in s.instrs
        ):
            problems.append(f"Dockerfile stage {label}: USER {users[-1]} is not created with useradd --uid 1000")
    return sorted(set(problems))


_PIP_INSTALL = re.compile(r"pip3?\s+install\b([^;&|]*)")


def check_dockerfile_install(text: str) -> list[str]:
    """torch/torchvision pinned first, then the project from its pyproject.toml, as README does."""
    global_args, stages = parse_dockerfile(text)
    if not stages:
        return ["Dockerfile: no FROM"]
    problems = []
    instrs = [i for s in stage_chain(stages, stages[-1], global_args) for i in s.instrs]
    torch_at = project_at = pyproject_at = None
    for n, ins in enumerate(instrs):
        if ins.cmd == "COPY" and "pyproject.toml" in _copy_sources(ins)[0] and pyproject_at is None:
            pyproject_at = n
        if ins.cmd != "RUN":
            continue
        for m in _PIP_INSTALL.finditer(ins.args):
            words = shlex.split(m.group(1).replace("\\", " "))
            if "--no-cache-dir" not in words:
                problems.append(f"Dockerfile line {ins.line}: pip install without --no-cache-dir")
            if all(p in words for p in TORCH_PINS) and torch_at is None:
                torch_at = n
            if any(re.fullmatch(r"\.(\[[\w,-]+\])?|/app", w) for w in words) and project_at is None:
                project_at = n
    if torch_at is None:
        problems.append(f"Dockerfile: the final image installs no {' '.join(TORCH_PINS)}")
    if project_at is None:
        problems.append("Dockerfile: the final image does not pip install the project ('pip install .')")
    elif torch_at is not None and project_at < torch_at:
        problems.append("Dockerfile: the project is installed before torch/torchvision (README installs them first)")
    if project_at is not None and (pyproject_at is None or pyproject_at > project_at):
        problems.append("Dockerfile: pyproject.toml is not copied in before 'pip install .'")
    last = stages[-1].instrs
    entry = [i.args for i in last if i.cmd == "ENTRYPOINT"]
    cmd = [i.args for i in last if i.cmd == "CMD"]
    if not entry or json.loads(entry[-1]) != ["pal-study"]:
        problems.append(f'Dockerfile: final ENTRYPOINT is {entry[-1] if entry else None}, want ["pal-study"]')
    if not cmd or json.loads(cmd[-1]) != ["--help"]:
        problems.append(f'Dockerfile: final CMD is {cmd[-1] if cmd else None}, want ["--help"]')
    return problems


def _pins(stage_list: list[Stage]) -> dict[str, str]:
    pins = {}
    for st in stage_list:
        for ins in st.instrs:
            if ins.cmd == "RUN":
                for m in _PIP_INSTALL.finditer(ins.args):
                    for w in shlex.split(m.group(1).replace("\\", " ")):
                        if "==" in w and not w.startswith("-"):
                            req = Requirement(w)
                            pins[req.name.lower()] = str(req.specifier).removeprefix("==")
    return pins


def check_dockerfile_pins(text: str) -> list[str]:
    """The image's pins satisfy pyproject.toml, and the MLflow server matches the client."""
    global_args, stages = parse_dockerfile(text)
    app = _pins(stage_chain(stages, stages[-1], global_args))
    deps = {
        Requirement(d).name.lower(): Requirement(d)
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    problems = [
        f"Dockerfile pins {name}=={ver}, outside pyproject.toml's {deps[name]}"
        for name, ver in app.items()
        if name in deps and not deps[name].specifier.contains(ver)
    ]
    server = {s.name: _pins([s]) for s in stages if s.name}.get("mlflow-server", {})
    if server.get("mlflow") != app.get("mlflow"):
        problems.append(f"Dockerfile: MLflow server {server.get('mlflow')} != client {app.get('mlflow')}")
    if "psycopg2-binary" not in server and "psycopg2" not in server:
        problems.append("Dockerfile: the mlflow-server stage installs no psycopg2 (the PostgreSQL backend needs it)")
    return problems


def check_torch_indexes(text: str) -> list[str]:
    """Each variant installs torch from its own PyTorch wheel index."""
    global_args, stages = parse_dockerfile(text)
    problems = []
    for variant, want in (("cuda", r"/whl/cu\d+$"), ("cpu", r"/whl/cpu$")):
        env: dict[str, str] = dict(global_args)
        for st in stage_chain(stages, stages[-1], global_args, {"VARIANT": variant}):
            for ins in st.instrs:
                if ins.cmd == "ENV":
                    for tok in shlex.split(ins.args):
                        k, _, v = tok.partition("=")
                        env[k] = interpolate(v, env)[0]
        torch_runs = [
            i
            for st in stage_chain(stages, stages[-1], global_args, {"VARIANT": variant})
            for i in st.instrs
            if i.cmd == "RUN" and "torch==" in i.args
        ]
        urls = [
            interpolate(m.group(1), env)[0]
            for i in torch_runs
            for m in re.finditer(r"--(?:index-url|extra-index-url)[= ]\"?([^\s\"]+)", i.args)
        ]
        if not urls or not all(re.search(want, u) for u in urls):
            problems.append(
                f"Dockerfile: VARIANT={variant} installs torch from {urls or 'PyPI'}, want an index matching {want}"
            )
    return problems


# --------------------------------------------------------------------------------------------
# Build context and .env.example
# --------------------------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(text: str, path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent matches."""
    excluded = False
    parents = [str(Path(*Path(path).parts[:k])) for k in range(1, len(Path(path).parts) + 1)]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        rx = _ignore_regex(line.lstrip("!").strip().strip("/"))
        if any(rx.fullmatch(p) for p in parents):
            excluded = not neg
    return excluded


def check_dockerignore(text: str) -> list[str]:
    problems = []
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "runs/quickstart/optuna.journal",
        "mlruns/mlflow.db",
        "tests/artifacts/x.png",
        ".env",
        "docker/.env",
        "pal_study/.env",
        "pal_study/__pycache__/cli.cpython-311.pyc",
    ):
        if not dockerignore_excludes(text, path):
            problems.append(f"Dockerfile.dockerignore lets {path!r} into the build context")
    for path in (
        "pyproject.toml",
        "README.md",
        "pal_study/cli.py",
        "pal_study/study/runner.py",
        "studies/quickstart.yaml",
        "search_spaces/margin.yaml",
    ):
        if dockerignore_excludes(text, path):
            problems.append(f"Dockerfile.dockerignore keeps {path!r} out, but the image copies it")
    return problems


def parse_env_file(text: str) -> dict[str, str]:
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip().strip("'\"")
    return out


def check_env_example(text: str, compose: dict[str, Any]) -> list[str]:
    env = parse_env_file(text)
    problems = []
    for key, value in env.items():
        if any(w in key.upper() for w in SECRET_WORDS) and value not in PLACEHOLDER_SECRETS:
            problems.append(f".env.example: {key} has a value ({value!r}); leave it empty or 'change-me'")
        elif (
            re.fullmatch(r"[A-Za-z0-9+/=_-]{20,}", value) and re.search(r"\d", value) and re.search(r"[A-Za-z]", value)
        ):
            problems.append(f".env.example: {key}={value!r} looks like a real secret")
    required = sorted(
        {m.group(1) for _, s in _strings(compose) for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", s)}
    )
    problems += [f".env.example does not list {name}, which compose requires" for name in required if name not in env]
    bind = env.get("BIND_ADDRESS", "127.0.0.1")
    if bind not in LOOPBACK:
        problems.append(f".env.example: BIND_ADDRESS={bind!r} publishes the ports beyond loopback; keep 127.0.0.1")
    if not re.search(r"openssl rand|secrets\.token", text):
        problems.append(".env.example does not say how to generate the secrets (e.g. openssl rand -hex 32)")
    return problems


# --------------------------------------------------------------------------------------------
# The real files
# --------------------------------------------------------------------------------------------


def _fmt(problems: list[str]) -> str:
    return "\n".join(problems)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def _build_targets(c: dict[str, Any]) -> tuple[str, ...]:
    return tuple(
        svc["build"]["target"]
        for svc in c["services"].values()
        if isinstance(svc.get("build"), dict) and svc["build"].get("target")
    )


def test_compose_parses_with_the_required_services(compose):
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict), (
        "compose.yaml has no services mapping"
    )
    assert not check_services(compose), _fmt(check_services(compose))


@pytest.mark.parametrize("check", COMPOSE_CHECKS[1:], ids=lambda f: f.__name__)
def test_compose(compose, check):
    problems = check(compose)
    assert not problems, _fmt(problems)


def test_compose_builds_from_this_dockerfile(compose):
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if build is None:
            continue
        ctx = (COMPOSE.parent / build["context"]).resolve()
        assert ctx == ROOT, f"service {name!r}: build context {ctx} is not the repository root"
        assert (ctx / build["dockerfile"]).resolve() == DOCKERFILE, f"service {name!r} builds {build['dockerfile']}"
        if "args" in build:
            variant = interpolate(str(build["args"].get("VARIANT", "cuda")))[0]
            assert variant in ("cuda", "cpu"), f"service {name!r}: VARIANT defaults to {variant!r}"


@pytest.mark.parametrize(
    "check",
    [
        check_dockerfile_bases,
        check_dockerfile_secrets,
        check_dockerfile_copies,
        check_dockerfile_install,
        check_dockerfile_pins,
        check_torch_indexes,
    ],
    ids=lambda f: f.__name__,
)
def test_dockerfile(dockerfile, check):
    problems = check(dockerfile)
    assert not problems, _fmt(problems)


def test_dockerfile_runs_as_non_root(dockerfile, compose):
    problems = check_dockerfile_user(dockerfile, _build_targets(compose))
    assert not problems, _fmt(problems)


def test_build_context_filter():
    assert DOCKERIGNORE.is_file(), "docker/Dockerfile.dockerignore is missing (BuildKit reads it for docker/Dockerfile)"
    problems = check_dockerignore(DOCKERIGNORE.read_text())
    assert not problems, _fmt(problems)


def test_env_example(compose):
    problems = check_env_example(ENV_EXAMPLE.read_text(), compose)
    assert not problems, _fmt(problems)
    env = parse_env_file(ENV_EXAMPLE.read_text())
    assert {"POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"} <= env.keys(), f".env.example lists {sorted(env)}"


def test_readme_documents_the_stack():
    text = (DOCKER / "README.md").read_text()
    for needle in (
        "docker/.env.example",
        "up -d --wait",
        "run --rm study",
        "http://127.0.0.1:5000",
        "--address",
        "--tracking-uri",
        "KubeRay",
        "--max-concurrent",
        "test_docker_static.py",
    ):
        assert needle in text, f"docker/README.md does not mention {needle!r}"


# --------------------------------------------------------------------------------------------
# The checkers reject what they should (mutated copies of the real files)
# --------------------------------------------------------------------------------------------


def _set(path: str, value: Any):
    def mutate(c: dict[str, Any]) -> None:
        *keys, last = path.split("/")
        node = c
        for k in keys:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if value is _DELETE:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


_DELETE = object()

COMPOSE_MUTATIONS = {
    "port without host address": (_set("services/mlflow/ports/0", "5000:5000"), check_ports, "all interfaces"),
    "port bare number": (_set("services/mlflow/ports/0", 5000), check_ports, "all interfaces"),
    "port on 0.0.0.0": (_set("services/ray-head/ports/0", "0.0.0.0:8265:8265"), check_ports, "0.0.0.0"),
    "bind default 0.0.0.0": (
        _set("services/mlflow/ports/0", "${BIND_ADDRESS:-0.0.0.0}:5000:5000"),
        check_ports,
        "0.0.0.0",
    ),
    "bind var without default": (
        _set("services/mlflow/ports/0", "${BIND_ADDRESS}:5000:5000"),
        check_ports,
        "all interfaces",
    ),
    "long port syntax without host_ip": (
        _set("services/mlflow/ports/0", {"target": 5000, "published": 5000}),
        check_ports,
        "host_ip",
    ),
    "host networking": (_set("services/ray-head/network_mode", "host"), check_ports, "network_mode"),
    "image latest": (_set("services/postgres/image", "postgres:latest"), check_images, "latest"),
    "image bare name": (_set("services/postgres/image", "postgres"), check_images, "no tag"),
    "image major only": (_set("services/postgres/image", "postgres:15"), check_images, "exact version"),
    "image tag from variable": (_set("services/ray-head/image", "pal-study:${TAG}"), check_images, "no default"),
    "password literal": (
        _set("services/postgres/environment/POSTGRES_PASSWORD", "hunter2"),
        check_secrets,
        "POSTGRES_PASSWORD",
    ),
    "password default": (
        _set("services/postgres/environment/POSTGRES_PASSWORD", "${POSTGRES_PASSWORD:-hunter2}"),
        check_secrets,
        "default",
    ),
    "token optional": (
        _set("services/ray-head/environment/RAY_AUTH_TOKEN", "${RAY_AUTH_TOKEN}"),
        check_secrets,
        "RAY_AUTH_TOKEN",
    ),
    "password in URL": (
        _set("services/mlflow/command/2", "postgresql+psycopg2://mlflow:hunter2@postgres:5432/mlflow"),
        check_secrets,
        "password in a URL",
    ),
    "secret build arg": (
        _set("services/ray-head/build/args/RAY_AUTH_TOKEN", "${RAY_AUTH_TOKEN:?x}"),
        check_secrets,
        "build arg",
    ),
    "worker without GPU": (_set("services/ray-worker/deploy/resources", _DELETE), check_gpu_workers, "no GPU"),
    "GPU without capability": (
        _set("services/ray-worker/deploy/resources/reservations/devices/0/capabilities", ["compute"]),
        check_gpu_workers,
        "no GPU",
    ),
    "no study service": (_set("services/study", _DELETE), check_services, "'study'"),
    "no postgres healthcheck": (_set("services/postgres/healthcheck", _DELETE), check_healthchecks, "postgres"),
    "study without tracking server": (
        _set("services/study/command", ["run", "studies/quickstart.yaml", "--address", "ray-head:6379"]),
        check_wiring,
        "--tracking-uri",
    ),
    "worker without token auth": (
        _set("services/ray-worker/environment", {"RAY_AUTH_TOKEN": "${RAY_AUTH_TOKEN:?x}"}),
        check_wiring,
        "RAY_AUTH_MODE",
    ),
    "runs volume not shared": (_set("services/ray-worker/volumes", []), check_wiring, "runs/"),
}


@pytest.mark.parametrize("mutation", COMPOSE_MUTATIONS, ids=str)
def test_compose_checks_reject(compose, mutation):
    mutate, check, needle = COMPOSE_MUTATIONS[mutation]
    c = copy.deepcopy(compose)
    # YAML anchors share one object between services: copy each service's environment apart.
    for svc in c["services"].values():
        if isinstance(svc.get("environment"), dict):
            svc["environment"] = dict(svc["environment"])
    assert not check(c), f"{check.__name__} already fails on the real compose.yaml"
    mutate(c)
    problems = check(c)
    assert problems, f"{check.__name__} accepted a compose file with: {mutation}"
    assert any(needle in p for p in problems), f"{check.__name__} on {mutation!r} said {problems}, not {needle!r}"


def _replace(old: str, new: str, count: int = 1):
    def mutate(text: str) -> str:
        assert old in text, f"mutation target {old!r} not in the Dockerfile"
        return text.replace(old, new, count)

    return mutate


DOCKERFILE_MUTATIONS = {
    "no USER": (_replace("USER pal\n", ""), check_dockerfile_user, "runs as root"),
    "USER root": (_replace("USER pal\n", "USER root\n"), check_dockerfile_user, "is root"),
    "mlflow server as root": (_replace("USER mlflow\n", ""), check_dockerfile_user, "mlflow-server"),
    "token in ENV": (
        _replace("    RAY_USAGE_STATS_ENABLED=0\n", "    RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_TOKEN=abc\n"),
        check_dockerfile_secrets,
        "RAY_AUTH_TOKEN",
    ),
    "password ARG": (
        _replace("USER pal\n", "ARG POSTGRES_PASSWORD=x\nUSER pal\n"),
        check_dockerfile_secrets,
        "POSTGRES_PASSWORD",
    ),
    "floating python tag": (
        _replace("ARG CPU_BASE_IMAGE=python:3.11.13-slim-bookworm", "ARG CPU_BASE_IMAGE=python:3.11-slim-bookworm"),
        check_dockerfile_bases,
        "exact version",
    ),
    "latest cuda base": (
        _replace("ARG CUDA_BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04", "ARG CUDA_BASE_IMAGE=nvidia/cuda:latest"),
        check_dockerfile_bases,
        "latest",
    ),
    "untagged FROM": (
        _replace("FROM ${PYTHON_IMAGE} AS mlflow-server", "FROM ubuntu AS mlflow-server"),
        check_dockerfile_bases,
        "no tag",
    ),
    "FROM an undefined ARG": (
        _replace("FROM ${CPU_BASE_IMAGE} AS base-cpu", "FROM ${BASE} AS base-cpu"),
        check_dockerfile_bases,
        "BASE",
    ),
    "COPY everything": (_replace("COPY studies/ studies/", "COPY . ."), check_dockerfile_copies, "'.'"),
    "COPY .env": (
        _replace("COPY studies/ studies/", "COPY studies/ studies/\nCOPY docker/.env /app/.env"),
        check_dockerfile_copies,
        ".env",
    ),
    "torch unpinned": (
        _replace("torch==2.14.1 torchvision==0.29.1", "torch torchvision"),
        check_dockerfile_install,
        "torch==2.14.1",
    ),
    "project not installed": (
        _replace("install --no-cache-dir . ", "install --no-cache-dir "),
        check_dockerfile_install,
        "pip install .",
    ),
    "pip cache kept": (_replace("install --no-cache-dir . ", "install . "), check_dockerfile_install, "--no-cache-dir"),
    "no entrypoint": (_replace('ENTRYPOINT ["pal-study"]\n', ""), check_dockerfile_install, "ENTRYPOINT"),
    "server/client MLflow differ": (
        _replace(
            "mlflow==3.17.2 psycopg2-binary==2.9.13\nRUN useradd", "mlflow==3.16.0 psycopg2-binary==2.9.13\nRUN useradd"
        ),
        check_dockerfile_pins,
        "MLflow server",
    ),
    "torch outside pyproject": (
        _replace("torch==2.14.1 torchvision", "torch==3.0.0 torchvision"),
        check_dockerfile_pins,
        "torch",
    ),
    "cuda variant on CPU wheels": (
        _replace(
            "ARG CUDA_TORCH_INDEX=https://download.pytorch.org/whl/cu128",
            "ARG CUDA_TORCH_INDEX=https://download.pytorch.org/whl/cpu",
        ),
        check_torch_indexes,
        "VARIANT=cuda",
    ),
}


@pytest.mark.parametrize("mutation", DOCKERFILE_MUTATIONS, ids=str)
def test_dockerfile_checks_reject(dockerfile, compose, mutation):
    mutate, check, needle = DOCKERFILE_MUTATIONS[mutation]
    run = (lambda t: check(t, _build_targets(compose))) if check is check_dockerfile_user else check
    assert not run(dockerfile), f"{check.__name__} already fails on the real Dockerfile"
    problems = run(mutate(dockerfile))
    assert problems, f"{check.__name__} accepted a Dockerfile with: {mutation}"
    assert any(needle in p for p in problems), f"{check.__name__} on {mutation!r} said {problems}, not {needle!r}"


@pytest.mark.parametrize("value", ["3f9a1c2b7d8e4f60a1b2c3d4e5f60718", "hunter2"])
def test_env_example_check_rejects_secrets(compose, value):
    text = ENV_EXAMPLE.read_text().replace("POSTGRES_PASSWORD=\n", f"POSTGRES_PASSWORD={value}\n")
    assert text != ENV_EXAMPLE.read_text(), "mutation target POSTGRES_PASSWORD= not in .env.example"
    problems = check_env_example(text, compose)
    assert any("POSTGRES_PASSWORD" in p for p in problems), (
        f"check_env_example accepted POSTGRES_PASSWORD={value}: {problems}"
    )


def test_env_example_check_rejects_an_exposed_bind_address(compose):
    text = ENV_EXAMPLE.read_text().replace("BIND_ADDRESS=127.0.0.1\n", "BIND_ADDRESS=0.0.0.0\n")
    assert text != ENV_EXAMPLE.read_text(), "mutation target BIND_ADDRESS=127.0.0.1 not in .env.example"
    problems = check_env_example(text, compose)
    assert any("BIND_ADDRESS" in p for p in problems), f"check_env_example accepted BIND_ADDRESS=0.0.0.0: {problems}"


def test_env_example_check_wants_every_required_variable(compose):
    text = ENV_EXAMPLE.read_text().replace("RAY_AUTH_TOKEN=\n", "")
    problems = check_env_example(text, compose)
    assert any("RAY_AUTH_TOKEN" in p for p in problems), (
        f"check_env_example missed the absent RAY_AUTH_TOKEN: {problems}"
    )


def test_dockerignore_check_rejects_a_leaky_filter():
    text = DOCKERIGNORE.read_text()
    leaky = "\n".join(
        line for line in text.splitlines() if line.strip() not in ("*", ".venv", "**/.env", "**/*.env", "docker/.env")
    )
    problems = check_dockerignore(leaky)
    assert any(".venv" in p for p in problems), f"check_dockerignore accepted a filter without .venv: {problems}"
    assert any(".env" in p for p in problems), f"check_dockerignore accepted a filter that lets .env in: {problems}"
