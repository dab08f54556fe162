"""The ``pal-study`` command line.

Exit codes: 0 ok, 1 a run that failed, 2 bad input (config, path, name). A user mistake is one
clear message on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

# Light imports only: `--help`, `--version`, `status` and completion must not pay for torch, Ray
# or MLflow (seconds on a small machine); each command imports what it runs.
from pal_study.errors import ConfigError

app = typer.Typer(
    name="pal-study",
    help="Hyperparameter and ablation studies of Prototype-Anchored Learning (PAL).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion [bash|zsh|fish|powershell]
    pretty_exceptions_enable=False,
)
# Piped output (logs, CI, files) is not wrapped at 80 columns: tables stay one row per line.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def version() -> str:
    """The installed distribution's version, else the package's own (a source checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("pal-study")
    except PackageNotFoundError:
        from pal_study import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        out.print(f"pal-study {version()}", highlight=False, markup=False)
        raise typer.Exit(EXIT_OK)


@app.callback()
def _app_options(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


class UserError(Exception):
    """Bad input: printed as one message, exit 2."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
        force=True,
    )


TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="Tracking store: an MLflow tracking URI, or jsonl:///DIR for plain JSON-lines files "
        "(default: $MLFLOW_TRACKING_URI, else sqlite under ./mlruns/).",
    ),
]
NoTrackOpt = Annotated[bool, typer.Option("--no-track", help="Do not log to MLflow.")]

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set optim.epochs=5 (repeatable)."),
]


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="Trial config YAML; omit for the built-in defaults.")] = None,
    set_: SetOpt = None,
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="Result JSON path.")] = None,
    download: Annotated[
        bool, typer.Option("--download", help="Let torchvision download the data set (needs a network).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log info messages.")] = False,
    tracking_uri: TrackingOpt = None,
    no_track: NoTrackOpt = False,
    experiment: Annotated[
        str, typer.Option("--experiment", help="MLflow experiment of single trainings.")
    ] = "pal-study-train",
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint-dir",
            help=(
                "Save the trial's state in DIR/checkpoint.pt as it trains and continue from it when run again "
                "(a preempted batch job re-runs the same command)."
            ),
        ),
    ] = None,
    checkpoint_every: Annotated[
        str,
        typer.Option(
            "--checkpoint-every", help="With --checkpoint-dir: save every N epochs, or auto (cost < 2 % of epoch time)."
        ),
    ] = "auto",
    member: Annotated[
        list[str] | None,
        typer.Option(
            "--member",
            help=(
                "One member of a pack: its own overrides on top of --set, separated by ';' (e.g. "
                "'optim.lr=0.1;head.scale=5'). Repeat it: the members train in this process, fused into one "
                "model where they share data, seed, model and loss (see --fuse), else one after another."
            ),
        ),
    ] = None,
    fuse: Annotated[
        str,
        typer.Option(
            "--fuse",
            help="With --member: auto (fuse where it measured faster for the model on this device), on, off.",
        ),
    ] = "auto",
) -> None:
    """Train one model (or a pack of variants, --member) and write its result JSON (metrics per
    epoch, geometry, calibration)."""
    from pal_study.config import dump_yaml, load_train_config, method_name, resolve
    from pal_study.data import DataError
    from pal_study.train import build_dataset_for
    from pal_study.train import train as run_train

    _setup_logging(verbose)
    overrides = list(set_ or [])
    if download:
        overrides.append("data.download=true")
    if fuse not in ("auto", "on", "off"):
        raise UserError(f"--fuse: unknown {fuse!r}; allowed: auto, on, off")
    if member:
        if checkpoint_dir is not None:
            raise UserError("--checkpoint-dir saves one model; a pack (--member) writes no checkpoints")
        _train_pack(config, overrides, member, fuse, out_path, quiet, not no_track, tracking_uri, experiment)
        return
    cfg = resolve(load_train_config(config, overrides))
    tracking = None
    if not no_track:
        from pal_study.tracking import open_store

        tracking = open_store(tracking_uri)
        tracking.check()
    try:
        data = build_dataset_for(cfg)
    except DataError as e:
        raise UserError(f"data: {e}") from None

    method = method_name(cfg)
    if out_path is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / "train" / f"{stamp}-{method.replace('+', '_')}-seed{cfg.seed}"
        out_path = run_dir / "result.json"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))

    policy = None
    if checkpoint_dir is not None:
        from pal_study.checkpoint import CheckpointPolicy

        every: int | str = checkpoint_every
        if checkpoint_every != "auto":
            if not checkpoint_every.isdigit() or int(checkpoint_every) < 1:
                raise UserError(
                    f"--checkpoint-every: {checkpoint_every!r}; allowed: auto or a whole number of epochs >= 1"
                )
            every = int(checkpoint_every)
        policy = CheckpointPolicy(path=checkpoint_dir / "checkpoint.pt", every_epochs=every, keep_final=True)
        # The trainer logs "resumed from epoch k (checkpoint ...)" when it loads one: show it.
        logging.getLogger("pal_study.train").setLevel(logging.INFO)
    err.print(
        f"[bold]{method}[/] on {cfg.data.name} · noise {cfg.data.noise.kind} {cfg.data.noise.rate:g} · "
        f"imbalance {cfg.data.imbalance.ratio:g} · {cfg.model.arch} · {cfg.optim.epochs} epochs · seed {cfg.seed}"
    )
    from pal_study.study.trainable import inject_fault

    fault = inject_fault(cfg.model_dump(mode="json"))  # tests' kill hook; inert unless PAL_STUDY_FAULT is set
    result = _train_with_progress(run_train, cfg, data, quiet, policy, fault)
    result.save(out_path)
    _print_result(result)
    err.print(f"result: {out_path}")
    if tracking is not None:
        from pal_study.tracking.train_run import log_train_result

        run_id = log_train_result(tracking, experiment, result)
        err.print(f"tracked: {tracking.uri} experiment {experiment!r} run {run_id}", soft_wrap=True, highlight=False)
    if result.status == "failed":
        err.print(f"[red]failed:[/] {result.reason}")
        raise typer.Exit(EXIT_FAILED)


def _train_pack(
    config: Path | None,
    overrides: list[str],
    members: list[str],
    fuse: str,
    out_path: Path | None,
    quiet: bool,
    track: bool,
    tracking_uri: str | None,
    experiment: str,
) -> None:
    """``pal-study train --member ...``: several variants of one config in this process."""
    from pal_study.config import dump_yaml, load_train_config, resolve
    from pal_study.data import DataError
    from pal_study.fused_train import fuse_blocker, fusion_pays, train_fused
    from pal_study.train import build_dataset_for
    from pal_study.train import train as run_train

    extra = [[o.strip() for o in m.split(";") if o.strip()] for m in members]
    cfgs = [resolve(load_train_config(config, overrides + own)) for own in extra]
    why = fuse_blocker(cfgs)
    if fuse == "on" and why is not None:
        raise UserError(f"--fuse on: these members do not fuse: {why}")
    fused = why is None and (fuse == "on" or (fuse == "auto" and fusion_pays(cfgs[0], len(cfgs))))
    tracking = None
    if track:
        from pal_study.tracking import open_store

        tracking = open_store(tracking_uri)
        tracking.check()
    run_dir = out_path or Path("runs") / "train" / f"{time.strftime('%Y%m%d-%H%M%S')}-pack{len(cfgs)}"
    apart = why or ("--fuse off" if fuse == "off" else "fusing measured no faster for this model here")
    how = "fused into one model" if fused else f"one after another ({apart})"
    err.print(f"pack of {len(cfgs)} members, {how}", highlight=False, soft_wrap=True)
    try:
        shared = build_dataset_for(cfgs[0])
    except DataError as e:
        raise UserError(f"data: {e}") from None
    epochs = [c.optim.epochs or 0 for c in cfgs]
    with _pack_progress(quiet, extra, epochs) as hooks:
        if fused:
            results = train_fused(cfgs, hooks, data=shared)
        else:
            results = []
            for cfg, hook in zip(cfgs, hooks, strict=True):
                # Members that share the data set and seed reuse the one already built.
                same = cfg.data == cfgs[0].data and cfg.seed == cfgs[0].seed
                results.append(run_train(cfg, hook, data=shared if same else build_dataset_for(cfg)))
    table = Table(title=f"pack of {len(cfgs)} ({'fused' if fused else 'one after another'})", show_header=True)
    for col in ("member", "overrides", "status", "val_acc", "test_acc", "train_loss", "result"):
        table.add_column(col, justify="right" if col in ("val_acc", "test_acc", "train_loss") else "left")
    failed = 0
    for n, (cfg, own, result) in enumerate(zip(cfgs, extra, results, strict=True)):
        member_dir = Path(run_dir) / f"member{n}"
        member_dir.mkdir(parents=True, exist_ok=True)
        (member_dir / "config.yaml").write_text(dump_yaml(cfg))
        result.save(member_dir / "result.json")
        failed += result.status == "failed"
        f = result.final
        table.add_row(
            str(n),
            "; ".join(own) or "(--set only)",
            result.status,
            *("n/a" if f.get(key) is None else f"{f[key]:.4f}" for key in ("val_acc", "test_acc", "train_loss")),
            str(member_dir / "result.json"),
        )
        if tracking is not None:
            from pal_study.tracking.train_run import log_train_result

            log_train_result(tracking, experiment, result)
    out.print(table)
    if tracking is not None:
        err.print(f"tracked: {tracking.uri} experiment {experiment!r}, one run per member", soft_wrap=True)
    if failed:
        err.print(f"[red]failed:[/] {failed} of {len(cfgs)} members (their reasons are in their result.json)")
        raise typer.Exit(EXIT_FAILED)


@contextlib.contextmanager
def _pack_progress(quiet: bool, names: list[list[str]], epochs: list[int]):
    """One progress bar per member; yields the members' on_epoch hooks."""
    if quiet:
        yield [None] * len(names)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        MofNCompleteColumn(),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
    ) as progress:
        tasks = [
            progress.add_task(f"member {n}", total=e, info="; ".join(own))
            for n, (own, e) in enumerate(zip(names, epochs, strict=True))
        ]

        def hook(task: Any):
            def on_epoch(m) -> None:
                val = "n/a" if m.val_acc is None else f"{m.val_acc:.3f}"
                progress.update(task, completed=m.epoch, info=f"loss {m.train_loss:.4f} · val {val}")

            return on_epoch

        yield [hook(t) for t in tasks]


def _train_with_progress(run_train, cfg, data, quiet: bool, policy=None, fault=None):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if quiet:

        def silent(m) -> None:
            if fault is not None:
                fault(m.epoch)

        return run_train(cfg, silent, data=data, checkpoint=policy)
    columns = [
        TextColumn("epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("train", total=cfg.optim.epochs, info="")

        def on_epoch(m) -> None:
            val = "n/a" if m.val_acc is None else f"{m.val_acc:.3f}"
            progress.update(
                task,
                completed=m.epoch,
                info=f"loss {m.train_loss:.4f} · val {val} · test {m.test_acc:.3f} · ece {m.ece:.3f}",
            )
            if fault is not None:
                fault(m.epoch)

        return run_train(cfg, on_epoch, data=data, checkpoint=policy)


def _print_result(result) -> None:
    table = Table(title=f"{result.method}: {result.status}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    f = result.final
    for key in ("val_acc", "val_acc_clean", "test_acc", "train_loss", "ece", "gamma_min"):
        value = f.get(key)
        table.add_row(key, "n/a" if value is None else f"{value:.4f}")
    table.add_row("noise_rate_measured", f"{result.noise_rate_measured:.4f}")
    if result.group_acc:
        for g in ("many", "medium", "few"):
            v = result.group_acc.get(g)
            table.add_row(f"{g} acc", "n/a" if v is None else f"{v:.4f}")
    geo = result.prototype_geometry
    table.add_row("prototype cos max / etf", f"{geo['cos_max']:.4f} / {geo['etf_cos']:.4f}")
    table.add_row("wall time (s)", f"{result.wall_time_s:.1f}")
    out.print(table)


@app.command()
def prototypes(
    classes: Annotated[int, typer.Option("--classes", "-k", min=2, help="Number of classes k.")],
    dim: Annotated[int, typer.Option("--dim", "-d", min=1, help="Feature dimension d.")],
    method: Annotated[str, typer.Option("--method", help="etf | optimized | auto")] = "auto",
    use_relu: Annotated[
        bool, typer.Option("--use-relu", help="Prototypes for non-negative (post-ReLU) features.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Optimisation steps (optimized; default 40000).")
    ] = None,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write a k×d tensor: .pt or .npy")] = None,
) -> None:
    """Build k prototypes in R^d (simplex ETF or the paper's optimisation) and report their geometry."""
    from pal_study.prototypes import DEFAULT_STEPS, make_prototypes, prototype_geometry, save_prototypes

    steps = DEFAULT_STEPS if steps is None else steps
    _setup_logging(False)
    if method not in ("etf", "optimized", "auto"):
        raise UserError(f"--method: unknown {method!r}; allowed: etf, optimized, auto")
    if out_file is not None and out_file.suffix not in (".pt", ".npy"):
        raise UserError(f"--out: {str(out_file)!r} must end in .pt or .npy")
    try:
        w = make_prototypes(classes, dim, method, use_relu=use_relu, seed=seed, steps=steps)
    except ValueError as e:
        raise UserError(f"--method {method}: {e}") from None
    geo = prototype_geometry(w)
    table = Table(title=f"{classes} prototypes in R^{dim} ({method})")
    table.add_column("geometry")
    table.add_column("value", justify="right")
    for key, value in geo.items():
        table.add_row(key, f"{value:.6f}" if isinstance(value, float) else str(value))
    out.print(table)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        save_prototypes(w, out_file)
        err.print(f"wrote {out_file}")


def _complete_study(incomplete: str) -> list[str]:
    """Shell completion of STUDY: the shipped study names (else the shell completes file names)."""
    from pal_study.resources import list_shipped

    return [n for n in list_shipped("studies") if n.startswith(incomplete)]


@app.command()
def run(
    study_file: Annotated[
        Path,
        typer.Argument(
            metavar="STUDY",
            autocompletion=_complete_study,
            help=(
                "The study to run or resume: a YAML file, or the name of a shipped study "
                "(quickstart, noisy_labels, ...)."
            ),
        ),
    ],
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster HOST:PORT (or RAY_ADDRESS); default: a local Ray on 127.0.0.1."),
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option("--max-concurrent", min=1, help="At most N trials at once (default: what the resources allow)."),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the stored state of this study and start afresh.")
    ] = False,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where study state lives: RUNS_DIR/<study>/.")] = Path(
        "runs"
    ),
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    no_track: NoTrackOpt = False,
    trial_retries: Annotated[
        int | None,
        typer.Option(
            "--trial-retries",
            min=0,
            help="Re-run a trial whose process or node died up to N times (default: 3 on a cluster, 0 locally).",
        ),
    ] = None,
    storage: Annotated[
        Path | None,
        typer.Option(
            "--storage",
            help=(
                "Directory for trial checkpoints, DIR/<study>/checkpoints (default: beside the study's state "
                "in the runs dir); on a cluster, a path every node can reach."
            ),
        ),
    ] = None,
    progress: Annotated[
        str,
        typer.Option(
            "--progress",
            help=(
                "auto | rich | plain | none: live bars, timestamped lines (logs), or nothing; "
                "auto = rich on a terminal, else plain."
            ),
        ),
    ] = "auto",
) -> None:
    """Run a study on Ray Tune with Optuna sampling and pruning, then the finals; rerun to resume."""
    from pal_study.study.progress import MODES as PROGRESS_MODES

    if progress not in PROGRESS_MODES:
        raise UserError(f"--progress: unknown {progress!r}; allowed: {', '.join(PROGRESS_MODES)}")
    from pal_study.resources import resolve_study
    from pal_study.study import describe, load_study
    from pal_study.study.runner import render_table, run_study

    _setup_logging(False)
    study = load_study(resolve_study(study_file), list(set_ or []))
    err.print(f"pal-study {version()} · {describe(study).splitlines()[0]}", highlight=False, soft_wrap=True)
    from pal_study.study.spec import describe_packs, warnings

    err.print(describe_packs(study.spec.budget.pack), highlight=False, soft_wrap=True)

    for line in warnings(study):
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    outcome = run_study(
        study,
        runs_dir=runs_dir,
        address=address,
        max_concurrent=max_concurrent,
        restart=restart,
        console=err,
        tracking_uri=tracking_uri,
        track=not no_track,
        trial_retries=trial_retries,
        progress=progress,
        storage=storage,
    )
    # Piped output (logs, CI) is not cut to 80 columns.
    out.print(render_table(study, outcome.cells))
    if outcome.rows:
        out.print(_answer(study, outcome, runs_dir, tracking_uri), highlight=False, markup=False, soft_wrap=True)
    if outcome.claims:
        from pal_study.analysis.claims import render_verdicts

        out.print(render_verdicts(outcome.claims), highlight=False, markup=False, soft_wrap=True)
    if outcome.sensitivity:
        from pal_study.analysis.sensitivity import render as render_sensitivity

        out.print(render_sensitivity(outcome.sensitivity), highlight=False, markup=False, soft_wrap=True)
    out.print(
        f"{outcome.wall_time_s:.0f} s on {outcome.slots} trial slots; state and summary in "
        f"{runs_dir / study.spec.name}/",
        highlight=False,
    )
    if outcome.interrupted:
        err.print("[yellow]interrupted[/]: run the same command again to resume")
        raise typer.Exit(130)
    causes = "\n".join(f"  {n} × {escape(reason)}" for reason, n in outcome.failure_causes()[:8])
    if outcome.all_failed:
        err.print(f"[red]every trial failed[/]; causes:\n{causes}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)
    if causes:
        err.print(f"[yellow]some trials failed[/]; causes:\n{causes}", highlight=False, soft_wrap=True)


def _answer(study: Any, outcome: Any, runs_dir: Path, tracking_uri: str | None) -> str:
    """What the study was run for, below its table: each X+head vs X (the report's numbers), and
    the command that prints the rest."""
    import shlex

    from pal_study.analysis.answer import render_answer

    cmd = ["pal-study", "report", study.spec.name]
    if runs_dir != Path("runs"):
        cmd += ["--runs-dir", str(runs_dir)]
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    titles = {c.label: c.name for c in study.cells}
    return render_answer(outcome.rows, outcome.claims, titles, command=shlex.join(cmd))


@app.command()
def slurm(
    study_file: Annotated[
        Path,
        typer.Argument(
            metavar="STUDY", autocompletion=_complete_study, help="The study to run: a YAML file or a shipped study."
        ),
    ],
    nodes: Annotated[
        int, typer.Option("--nodes", help="Nodes: Ray's head on the first, a Ray worker on each other.")
    ] = 1,
    gpus_per_node: Annotated[
        int, typer.Option("--gpus-per-node", help="GPUs per node (--gres=gpu:G; Ray's --num-gpus).")
    ] = 0,
    cpus_per_node: Annotated[
        int | None, typer.Option("--cpus-per-node", help="CPUs per node (default: whole nodes, --exclusive).")
    ] = None,
    partition: Annotated[str | None, typer.Option("--partition", help="SLURM partition.")] = None,
    time_limit: Annotated[
        str | None, typer.Option("--time", help="Time limit (SLURM's forms: 90, 1:30:00, 2-00:00:00).")
    ] = None,
    account: Annotated[str | None, typer.Option("--account", help="SLURM account to charge.")] = None,
    stop_before: Annotated[
        int,
        typer.Option(
            "--stop-before", help="Seconds before the time limit at which the study stops cleanly (--signal)."
        ),
    ] = 120,
    requeue: Annotated[
        bool,
        typer.Option("--requeue/--no-requeue", help="After stopping for the time limit, requeue the job (it resumes)."),
    ] = True,
    ray_port: Annotated[
        int | None, typer.Option("--ray-port", help="First of the job's 200 Ray ports (default: from the job id).")
    ] = None,
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="Where study state lives, on a path every node and this one reach.")
    ] = Path("runs"),
    storage: Annotated[
        Path | None,
        typer.Option("--storage", help="Trial checkpoints' directory, shared like --runs-dir (default: --runs-dir)."),
    ] = None,
    set_: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    no_track: NoTrackOpt = False,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", min=1, help="At most N trials at once.")
    ] = None,
    trial_retries: Annotated[
        int | None, typer.Option("--trial-retries", min=0, help="Re-run a trial whose node died up to N times.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the sbatch script; write and submit nothing.")
    ] = False,
) -> None:
    """Run a study as a SLURM batch job: write its sbatch script into the study's run directory and
    submit it (--dry-run prints it). Before the time limit the study stops cleanly and the job
    requeues itself; pal-study status / report read the run directory from the login node."""
    from pal_study import slurm as slurm_job
    from pal_study.resources import resolve_study
    from pal_study.study import load_study

    path = resolve_study(study_file).resolve()
    overrides = list(set_ or [])
    study = load_study(path, overrides)
    run_args = [a for o in overrides for a in ("--set", o)]
    for opt, value in (("--tracking-uri", tracking_uri), ("--max-concurrent", max_concurrent)):
        if value is not None:
            run_args += [opt, str(value)]
    if trial_retries is not None:
        run_args += ["--trial-retries", str(trial_retries)]
    if no_track:
        run_args.append("--no-track")
    job = slurm_job.SlurmJob(
        study=str(path),
        name=study.spec.name,
        runs_dir=runs_dir.resolve(),
        storage=(storage or runs_dir).resolve(),
        workdir=Path.cwd(),
        nodes=nodes,
        cpus_per_node=cpus_per_node,
        gpus_per_node=gpus_per_node,
        partition=partition,
        account=account,
        time=time_limit,
        stop_before_s=stop_before,
        requeue=requeue,
        ray_port=ray_port,
        run_args=tuple(run_args),
    )
    slurm_job.check(job)
    warning = slurm_job.shared_path_warning(job)
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if dry_run:
        sys.stdout.write(slurm_job.render_script(job, version()))
        return
    slurm_job.sbatch_command()  # before anything is written
    script = slurm_job.write_script(job, version())
    job_id = slurm_job.submit(script)
    err.print(
        f"submitted job {job_id} ({script}); log: {job.log_path(job_id)}\n"
        f"where it stands: pal-study status {study.spec.name} --runs-dir {job.runs_dir}\n"
        f"resubmit after a cancel or a failure (it resumes): sbatch {script}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    out.print(job_id, highlight=False)


def _study_name(study: str) -> str:
    """STUDY is a study name or a study YAML (whose name is used)."""
    p = Path(study)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        from pal_study.config import read_yaml

        name = read_yaml(p).get("name")
        if not isinstance(name, str):
            raise UserError(f"{study}: no 'name' key")
        return name
    return study


@app.command()
def status(
    study: Annotated[str, typer.Argument(help="Study name or its YAML.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (the whole status) and nothing else.")
    ] = False,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where study state lives: RUNS_DIR/<study>/.")] = Path(
        "runs"
    ),
) -> None:
    """Where a study stands, from its run directory alone: per cell trials done/pruned/failed/running/left,
    best value and params, finals; running or not, elapsed, ETA, failures. Never locks or writes."""

    from pal_study.study.status import render_status, study_status

    st = study_status(runs_dir / _study_name(study))
    if as_json:
        sys.stdout.write(st.to_json() + "\n")
        sys.stdout.flush()
        return
    for part in render_status(st):
        if isinstance(part, str):
            out.print(part, markup=False, highlight=False, soft_wrap=True)
        else:
            out.print(part)


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="Study name or its YAML.")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="md | csv | latex | json | html, printed on stdout (pipe-able); default: a table for the terminal.",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write every format, the figures and report.html here.")
    ] = None,
    baseline: Annotated[
        str, typer.Option("--baseline", help="base: X+pal / X+fnpal / X+norm against X; ce: every method against CE.")
    ] = "base",
    adjust: Annotated[
        str, typer.Option("--adjust", help="q-values over all comparisons: bh (Benjamini-Hochberg) | holm.")
    ] = "bh",
    importance: Annotated[
        str,
        typer.Option(
            "--importance", help="Parameter importance per cell from the Optuna journal: ped_anova | fanova | none."
        ),
    ] = "ped_anova",
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="auto: RUNS_DIR/<study> when its run is complete and no store is named (--tracking-uri, "
            "$MLFLOW_TRACKING_URI), else the tracking store when it holds the study, else RUNS_DIR/<study>; "
            "mlflow; runs (the same numbers).",
        ),
    ] = "auto",
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where study state lives: RUNS_DIR/<study>/.")] = Path(
        "runs"
    ),
    tracking_uri: TrackingOpt = None,
) -> None:
    """A study's comparison (paired by seed, CIs, q-values), claims, ranks across conditions,
    probability of improvement, parameter importance and figures, from the tracking store or the
    study's own record (Optuna journal + summary.json; a --no-track study reports too)."""
    from pal_study.analysis.claims import render_verdicts
    from pal_study.analysis.formats import REPORT_FORMATS, analysis_md, render, report_files, rich_table
    from pal_study.analysis.importance import EVALUATORS
    from pal_study.analysis.record import SOURCES, open_source
    from pal_study.analysis.report import BASELINES, aggregate, analyse
    from pal_study.analysis.stats import ADJUSTMENTS

    for opt, value, allowed in (
        ("--format", fmt or "md", REPORT_FORMATS.names()),
        ("--baseline", baseline, BASELINES),
        ("--adjust", adjust, ADJUSTMENTS),
        ("--importance", importance, (*EVALUATORS, "none")),
        ("--source", source, SOURCES),
    ):
        if value not in allowed:
            raise UserError(f"{opt}: unknown {value!r}; allowed: {', '.join(allowed)}")
    name = _study_name(study)
    src = open_source(name, source=source, tracking_uri=tracking_uri, runs_dir=runs_dir, record_first=True)
    rows = aggregate(src.runs, baseline=baseline, adjust=adjust)
    if not rows:
        raise UserError(f"study {name!r}: no completed final runs in {src.where}")
    claims, sensitivity = src.judge(adjust)
    analysis = analyse(rows, src.runs, run_dir=src.run_dir, importance=None if importance == "none" else importance)
    analysis.sensitivity = sensitivity
    title = f"{name}: final seeds, mean ± std; Δ paired by seed vs {baseline}, q {adjust}"
    if out_dir is None and fmt is not None:
        sys.stdout.write(render(rows, fmt, claims, analysis, title=name))
        sys.stdout.flush()
        return
    if out_dir is None:
        out.print(rich_table(rows, title))
        if claims:
            out.print(render_verdicts(claims), highlight=False, markup=False, soft_wrap=True)
        out.print("\n".join(analysis_md(analysis)).strip(), highlight=False, markup=False, soft_wrap=True)
        err.print(f"(from {src.kind} {src.where})", highlight=False, markup=False)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    files = report_files(rows, name, claims, analysis)
    for f in REPORT_FORMATS.entries():  # as --format prints them; report.html comes with its figures from report_files
        if not f.embeds_figures:
            (out_dir / f.filename).write_text(render(rows, f.name, claims, analysis, title=name))
    for key, content in files.items():
        if key.endswith((".png", ".html", "sensitivity.csv")):
            target = out_dir / Path(key).name
            target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    n = sum(k.endswith(".png") for k in files)
    err.print(
        f"wrote comparison.md/.csv/.tex/.json, report.html and {n} figures to {out_dir}/ (from {src.kind} {src.where})",
        highlight=False,
        markup=False,
    )


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="Study name or its YAML.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for one YAML per cell and the index.")] = Path(
        "exports"
    ),
    weights: Annotated[
        bool,
        typer.Option(
            "--weights",
            help="Also write each cell's trained model (the exported final seed's last checkpoint) beside its YAML.",
        ),
    ] = False,
    source: Annotated[
        str,
        typer.Option(
            "--source", help="auto: the tracking store when it holds the study, else RUNS_DIR/<study>; mlflow; runs."
        ),
    ] = "auto",
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where study state lives: RUNS_DIR/<study>/.")] = Path(
        "runs"
    ),
    tracking_uri: TrackingOpt = None,
) -> None:
    """Write each cell's best config (re-runnable with pal-study train) and an index (JSON, CSV)."""
    from pal_study.analysis.export import export_study
    from pal_study.analysis.record import SOURCES, open_source

    if source not in SOURCES:
        raise UserError(f"--source: unknown {source!r}; allowed: {', '.join(SOURCES)}")
    name = _study_name(study)
    src = open_source(name, source=source, tracking_uri=tracking_uri, runs_dir=runs_dir)
    index = export_study(src, name, out_dir / name, weights=weights)
    err.print(
        f"wrote {len(index)} configs{' and models' if weights else ''} and index.json / index.csv to "
        f"{out_dir / name}/"
        + (" (also on the study's MLflow run)" if src.kind == "mlflow" else f" (from {src.where})"),
        highlight=False,
        markup=False,
    )


def public_bind_warning(host: str) -> str | None:
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    return (
        f"--host {host} makes the UI (and every run's data) reachable from other machines; "
        "MLflow's UI has no authentication by default"
    )


@app.command()
def ui(
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 5000,
    host: Annotated[
        str, typer.Option("--host", help="Bind address; anything but 127.0.0.1 exposes the UI.")
    ] = "127.0.0.1",
    study: Annotated[
        str | None, typer.Option("--study", help="Print the URLs of this study's cells (table and charts).")
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Serve the MLflow UI for the configured store (127.0.0.1 only unless --host says otherwise).
    SIGTERM, SIGINT or SIGHUP stops the server and all its processes (exit 0)."""
    from pal_study.servers import run_server
    from pal_study.tracking import open_store
    from pal_study.tracking.mlflow_store import MlflowStore, cells_view_url, default_artifact_root, has_cells_view

    tracking = open_store(tracking_uri)
    if not isinstance(tracking, MlflowStore):
        raise UserError(f"pal-study ui serves MLflow stores; {tracking.uri} is not one (its runs are plain files)")
    tracking.check()
    warning = public_bind_warning(host)
    if warning:
        err.print(f"[yellow]warning:[/] {warning}")

    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}/"
    if study:
        exp = tracking.find_experiment(_study_name(study))
        if exp is None:
            raise UserError(f"--study: no experiment {study!r} in {tracking.uri}")
        if has_cells_view(exp):
            err.print(
                f"MLflow UI for {tracking.uri}\n"
                f"  cells of study {exp.name} (table): {cells_view_url(base, exp.experiment_id)}\n"
                f"  cells compared (charts):  {cells_view_url(base, exp.experiment_id, charts=True)}\n"
                "  a cell's tuning trials and final seeds: tags.cell = '<cell label>'; all runs: clear the filter",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )
        else:  # tracked before cell runs existed
            err.print(
                f"MLflow UI for {tracking.uri} at {base}#/experiments/{exp.experiment_id}/runs\n"
                "compare: filter by tag (tags.stage = 'final', tags.method = 'ce+fnpal'), select runs, Compare",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )
    else:
        err.print(
            f"MLflow UI for {tracking.uri} at {base} (--study S opens a study's cells)",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking.uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    root = default_artifact_root(tracking.uri)
    if root:
        cmd += ["--default-artifact-root", root]
    # MLflow's job runner (GenAI jobs pal-study never submits) starts several worker processes.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    raise typer.Exit(run_server(cmd, env=env, name="mlflow server"))


@app.command()
def dashboard(
    study: Annotated[str, typer.Argument(help="Study name or its YAML.")],
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8080,
    host: Annotated[
        str, typer.Option("--host", help="Bind address; anything but 127.0.0.1 exposes the dashboard.")
    ] = "127.0.0.1",
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where study state lives: RUNS_DIR/<study>/.")] = Path(
        "runs"
    ),
    journal_file: Annotated[
        Path | None,
        typer.Option(
            "--journal",
            help="An Optuna journal file to serve instead of RUNS_DIR/<study>/optuna.journal (e.g. a copy).",
        ),
    ] = None,
) -> None:
    """Serve optuna-dashboard over a study's Optuna journal, live while it runs (read-only): per cell
    optimisation history, intermediate values and pruned trials, importances, parallel coordinates.
    SIGTERM, SIGINT or SIGHUP stops it (exit 0)."""
    import importlib

    from pal_study.layout import JOURNAL
    from pal_study.servers import run_server

    try:
        importlib.import_module("optuna_dashboard")
    except ImportError:
        raise UserError("optuna-dashboard is not installed: pip install 'pal-study[dashboard]'") from None
    name = _study_name(study)
    journal = runs_dir / name / JOURNAL if journal_file is None else journal_file
    if not journal.is_file():
        raise UserError(f"study {name!r}: no Optuna journal at {journal} (it has not run yet: pal-study run {study})")
    if public_bind_warning(host):
        err.print(
            f"[yellow]warning:[/] --host {escape(host)} makes the dashboard (every trial of the study) reachable "
            "from other machines; optuna-dashboard has no authentication",
            highlight=False,
        )
    shown = f"[{host}]" if ":" in host else host
    err.print(
        f"optuna-dashboard for study {name!r} ({journal}, read-only) at http://{shown}:{port}/\n"
        f"one Optuna study per cell: {name}/cellNNN (tuning) and {name}/cellNNN/finals",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    cmd = [
        sys.executable,
        "-m",
        "pal_study.servers",
        "optuna-dashboard",
        str(journal.resolve()),
        "--host",
        host,
        "--port",
        str(port),
    ]
    raise typer.Exit(run_server(cmd, name="optuna-dashboard"))


@app.command("list")
def list_(
    what: Annotated[
        str, typer.Argument(help="datasets | models | losses | methods | pruners | samplers | studies | spaces")
    ] = "methods",
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """What pal-study knows: data sets, models, losses, methods, pruners, samplers, shipped studies and spaces."""
    import json

    from pal_study.study.listing import listing, render_listing

    try:
        rows = listing(what)
    except ValueError as e:
        raise UserError(str(e)) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=1, ensure_ascii=False, default=str))
    else:
        out.print(render_listing(what, rows))


STUDY_KEYS = {"factors", "search", "budget", "finals", "resources", "objective", "base"}


@app.command()
def validate(
    file: Annotated[
        Path,
        typer.Argument(
            autocompletion=_complete_study,
            help="A trial config or a study YAML, or the name of a shipped study (quickstart, ...).",
        ),
    ],
    set_: SetOpt = None,
) -> None:
    """Check a trial config or a study and say exactly what is wrong (exit 2), or what it will run."""
    from pal_study.config import load_train_config, method_name, read_yaml, resolve
    from pal_study.resources import resolve_study

    file = resolve_study(file)

    if STUDY_KEYS & set(read_yaml(file)):
        from pal_study.study import describe, load_study
        from pal_study.study.spec import warnings

        study = load_study(file, list(set_ or []))
        out.print(f"[green]ok[/]: {file}")
        out.print(describe(study), highlight=False, soft_wrap=True)
        for line in warnings(study):
            out.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
        return
    cfg = resolve(load_train_config(file, list(set_ or [])))
    out.print(
        f"[green]ok[/]: {file}: {method_name(cfg)} on {cfg.data.name} "
        f"(noise {cfg.data.noise.kind} {cfg.data.noise.rate:g}, imbalance {cfg.data.imbalance.ratio:g}), "
        f"{cfg.model.arch}, head {cfg.head.kind}"
        + (f" s={cfg.head.scale:g}" if cfg.head.scale else "")
        + f", {cfg.optim.epochs} epochs, lr {cfg.optim.lr:g}, wd {cfg.optim.weight_decay:g}"
    )


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: maps user mistakes to exit 2 with one message."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except (ConfigError, UserError) as e:
        # escape: messages quote lists like [fnpal, norm], which rich would take for markup
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except typer.Abort:
        return 130
    except Exception as e:
        # Usage errors (unknown option, bad type) from typer's click; duck-typed because
        # typer >= 0.29 vendors click under another module name.
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show(file=sys.stderr)
            return code
        raise
    # In non-standalone mode click returns the code of typer.Exit / --help instead of exiting.
    return rc if isinstance(rc, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
