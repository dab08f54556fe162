"""``pal-study export STUDY [--weights]``: each cell's best config, re-runnable as is, plus an
index; with ``--weights`` also the trained model of that config beside it.

The config of a cell is its lowest final seed's ``config.yaml`` (the best tuning trial's
parameters at full budget, with that seed): ``pal-study train FILE`` on a CPU reproduces the
index's ``test_acc_of_exported_seed`` exactly. Its weights come from that final's last checkpoint
(kept when the study's checkpoints are on): ``pal_study.checkpoint.build_model_from_checkpoint``
loads the exported ``.pt`` back into a model.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from pal_study.analysis.record import Source
from pal_study.analysis.report import aggregate
from pal_study.checkpoint import export_weights
from pal_study.errors import ConfigError


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label).strip("_")[:120]


def export_study(source: Source, study: str, out_dir: Path, *, weights: bool = False) -> list[dict[str, Any]]:
    """Write the export from ``source`` (the tracking store or the study's run directory: the same
    files either way); with the tracking store, also log it on the study's run."""
    # Failed finals trained no model worth exporting (the report counts them).
    runs, exp_id, parent = [r for r in source.runs if not r.failed], source.experiment_id, source.parent
    if not runs:
        raise ConfigError(f"study {study!r}: no completed final runs in {source.where}", key="STUDY")
    rows = aggregate(runs)
    exported: dict[str, Any] = {}  # cell -> its lowest final seed's run (the one exported)
    for r in runs:
        if r.cell not in exported or r.seed < exported[r.cell].seed:
            exported[r.cell] = r
    if weights:
        # Checked before anything is written: all of the export or none of it.
        missing = [
            f"{row.cell} (seed {exported[row.cell].seed}: {exported[row.cell].checkpoint or 'no checkpoint recorded'})"
            for row in rows
            if not _readable(exported[row.cell].checkpoint)
        ]
        if missing:
            raise ConfigError(
                f"--weights: no trained model for {len(missing)} of {len(rows)} cells: {'; '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''}; the finals ran with checkpoints off "
                "(checkpoint.every_epochs: 0) "
                "or their files are not reachable from here (--storage on another machine)",
                key="--weights",
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    files: dict[str, str] = {}
    for i, row in enumerate(rows):
        first = exported[row.cell]
        text = source.config_yaml(first, study)
        name = f"{i:03d}_{_slug(row.cell)}.yaml"
        (out_dir / name).write_text(text)
        files[name] = text
        weights_name = None
        if weights:
            weights_name = name.removesuffix(".yaml") + ".pt"
            export_weights(first.checkpoint, out_dir / weights_name)
        index.append(
            {
                "cell": row.cell,
                "method": row.method,
                "config": name,
                "weights": weights_name,
                "seed": first.seed,
                "tune_best_value": first.metrics.get("tune_best_value"),
                "val_acc_mean": row.stats.get("val_acc", (None, None))[0],
                "val_acc_std": row.stats.get("val_acc", (None, None))[1],
                "test_acc_mean": row.stats.get("test_acc", (None, None))[0],
                "test_acc_std": row.stats.get("test_acc", (None, None))[1],
                "n_seeds": row.n,
                "test_acc_of_exported_seed": first.metrics.get("test_acc"),
                "run_of_exported_seed": first.run_id,
                "final_run_ids": row.run_ids,
                "parent_run_id": parent,
                "experiment_id": exp_id,
            }
        )
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(index[0]) if index else ["cell"])
    w.writeheader()
    for item in index:
        w.writerow({**item, "final_run_ids": " ".join(item["final_run_ids"])})
    (out_dir / "index.csv").write_text(buf.getvalue())
    if source.kind != "mlflow":
        return index
    tracking, parent_id = source.tracked()
    tracking.log_files(
        parent_id,
        {**files, "index.json": (out_dir / "index.json").read_text(), "index.csv": buf.getvalue()},
        artifact_path="export",
    )
    return index


def _readable(path: str | None) -> bool:
    return bool(path and Path(path).is_file())
