"""What the registries hold, as rows for ``pal-study list <what> [--json]``.

listing("losses")                 # [{"name": "ce", "formula": "−log p_y", ...}, ...]
render_listing("losses", rows)    # a rich Table of the same rows
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from pal_study import resources
from pal_study.config import ConfigError, DataConfig, method_name, read_yaml, validate_train_config
from pal_study.data.sets import DATASET_REGISTRY
from pal_study.specs.heads import HEADS
from pal_study.specs.losses import LOSS_REGISTRY, PARAM_REGISTRY
from pal_study.specs.models import MODEL_REGISTRY
from pal_study.study.pruners import PRUNER_REGISTRY
from pal_study.study.samplers import SAMPLER_REGISTRY

LISTINGS = ("datasets", "models", "losses", "methods", "pruners", "samplers", "studies", "spaces")


def listing(what: str) -> list[dict[str, Any]]:
    """Rows (JSON-serialisable dicts, one per entry, in registry order) for ``what`` in LISTINGS."""
    fn = _LISTERS.get(what)
    if fn is None:
        raise ValueError(f"unknown listing {what!r}; allowed: {', '.join(LISTINGS)}")
    return fn()


def _datasets() -> list[dict[str, Any]]:
    rows = []
    for spec in DATASET_REGISTRY.entries():
        options = getattr(DataConfig(), spec.options_key).model_dump() if spec.options_key else {}
        shape = spec.shape_for(options)
        rows.append(
            {
                "name": spec.name,
                "classes": spec.classes_for(options),
                "input_shape": list(shape),
                "default_arch": spec.arch_for(shape),
                "options": f"data.{spec.options_key}" if spec.options_key else None,
                "files": f"{spec.files[0]}/" if spec.files else None,
                "recipe": spec.recipe.as_optim(),
                "long_tail_recipe": spec.long_tail_recipe.as_optim() if spec.long_tail_recipe else None,
                "loss_defaults": spec.loss_defaults,
                "augment": spec.augment,
                "asymmetric_noise": spec.asymmetric_map is not None,
                "group_thresholds": list(spec.group_thresholds),
                "summary": spec.summary,
            }
        )
    return rows


def _models() -> list[dict[str, Any]]:
    return [
        {
            "name": m.name,
            "feature_dim": m.feature_dim,
            "input": "any shape (flattened)" if m.min_side is None else f"C×H×W with H, W ≥ {m.min_side}",
            "summary": m.summary,
        }
        for m in MODEL_REGISTRY.entries()
    ]


def _losses() -> list[dict[str, Any]]:
    rows = []
    for s in LOSS_REGISTRY.entries():
        params = {
            k: s.generic.get(k, PARAM_REGISTRY.get(k).default) for k in s.params if not PARAM_REGISTRY.get(k).required
        }
        params.update({k: "required" for k in s.params if PARAM_REGISTRY.get(k).required})
        rows.append(
            {
                "name": s.name,
                "formula": s.summary,
                "params": params,
                "defaults": {ref: dict(v) for ref, v in s.defaults.items()},
                "symmetric": s.symmetric,
                "normalized_only": s.normalized_only,
                "default_head": s.default_head,
            }
        )
    return rows


def _methods() -> list[dict[str, Any]]:
    """Every ``<loss>[+<head>]`` a config accepts; ``canonical``: the label results carry."""
    rows = []
    for loss in LOSS_REGISTRY.names():
        for method in (loss, *(f"{loss}+{head}" for head in HEADS)):
            try:
                cfg = validate_train_config({"method": method}, "(listing)")
            except ConfigError:
                continue
            rows.append(
                {
                    "method": method,
                    "loss": cfg.loss.name,
                    "head": cfg.head.kind,
                    "canonical": method_name(cfg) == method,
                }
            )
    return rows


def _variants(registry: Any) -> list[dict[str, Any]]:
    rows = []
    for cls in registry.entries():
        options = {k: f.default for k, f in cls.model_fields.items() if k != "name"}
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        rows.append({"name": cls.model_fields["name"].default, "options": options, "summary": " ".join(doc.split())})
    return rows


def _pruners() -> list[dict[str, Any]]:
    return _variants(PRUNER_REGISTRY)


def _samplers() -> list[dict[str, Any]]:
    return _variants(SAMPLER_REGISTRY)


def shipped_dir(kind: resources.Kind) -> Path:
    """The folder of the shipped ``studies`` or ``search_spaces`` (see pal_study.resources)."""
    return resources.shipped_dir(kind)


def _shipped(kind: resources.Kind) -> list[dict[str, Any]]:
    folder = shipped_dir(kind)
    rows = []
    for path in sorted(folder.glob("*.y*ml")) if folder.is_dir() else []:
        try:
            data = read_yaml(path)
        except ConfigError as e:
            data = {"description": f"(unreadable: {e})"}
        about = data.get("description") or _leading_comment(path)
        row: dict[str, Any] = {"name": path.stem, "description": " ".join(str(about).split())}
        if kind == "studies":
            row["factors"] = list(data.get("factors") or {}) if isinstance(data.get("factors"), dict) else []
            search = data.get("search") or []
            search = search if isinstance(search, list) else []
            row["search"] = [s if isinstance(s, str) else "(inline)" for s in search]
        else:
            params = data.get("params")
            row["params"] = list(params) if isinstance(params, dict) else []
        row["path"] = str(path)
        rows.append(row)
    return rows


def _leading_comment(path: Path) -> str:
    """The file's opening comment, up to its first indented (example command) or blank line."""
    lines = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        if not body.strip() or body.startswith("   "):
            break
        lines.append(body.strip())
    text = " ".join(lines)
    if text.endswith(":") and ". " in text:  # a sentence introducing the example lines
        text = text[: text.rindex(". ") + 1]
    return text


_LISTERS = {
    "datasets": _datasets,
    "models": _models,
    "losses": _losses,
    "methods": _methods,
    "pruners": _pruners,
    "samplers": _samplers,
    "studies": lambda: _shipped("studies"),
    "spaces": lambda: _shipped("search_spaces"),
}


# The columns a table shows where rows hold more than fits a terminal (--json has them all).
_TABLE_COLUMNS = {
    "datasets": (
        "name",
        "classes",
        "input_shape",
        "default_arch",
        "files",
        "recipe",
        "loss_defaults",
        "augment",
        "summary",
    ),
    "studies": ("name", "description", "factors", "search"),
    "spaces": ("name", "description", "params"),
}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        shown = (f"{k}={json.dumps(v) if isinstance(v, dict) else _cell(v)}" for k, v in value.items())
        return ", ".join(shown) or "-"
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "×".join(map(str, value))
        return ", ".join(map(_cell, value)) or "-"
    return str(value)


def render_listing(what: str, rows: list[dict[str, Any]]) -> Table:
    """A rich Table of ``listing(what)``'s rows: one column per key (nested values inline)."""
    table = Table(title=what, show_lines=False)
    columns = list(_TABLE_COLUMNS.get(what) or dict.fromkeys(k for row in rows for k in row))
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(col)) for col in columns))
    return table
