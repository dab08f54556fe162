"""``pal-study export STUDY``: each cell's best config, re-runnable as is, plus an index.

The config of a cell is its lowest final seed's ``config.yaml`` (the best tuning trial's
parameters at full budget, with that seed): ``pal-study train FILE`` on a CPU reproduces the
index's ``test_acc_of_exported_seed`` exactly.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from pal_study.report import aggregate, fetch_finals
from pal_study.tracking import Tracking


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label).strip("_")[:120]


def export_study(tracking: Tracking, study: str, out_dir: Path) -> list[dict[str, Any]]:
    exp_id, parent, runs = fetch_finals(tracking.client, study)
    rows = aggregate(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_cell: dict[str, list] = {}
    for r in runs:
        by_cell.setdefault(r.cell, []).append(r)
    index = []
    files: dict[str, str] = {}
    for i, row in enumerate(rows):
        first = min(by_cell[row.cell], key=lambda r: r.seed)
        with tempfile.TemporaryDirectory() as tmp:
            local = tracking.client.download_artifacts(first.run_id, "config.yaml", tmp)
            text = Path(local).read_text()
        name = f"{i:03d}_{_slug(row.cell)}.yaml"
        (out_dir / name).write_text(text)
        files[name] = text
        index.append({
            "cell": row.cell, "method": row.method, "config": name, "seed": first.seed,
            "tune_best_value": first.metrics.get("tune_best_value"),
            "val_acc_mean": row.stats.get("val_acc", (None, None))[0], "val_acc_std": row.stats.get("val_acc", (None, None))[1],
            "test_acc_mean": row.stats.get("test_acc", (None, None))[0], "test_acc_std": row.stats.get("test_acc", (None, None))[1],
            "n_seeds": row.n, "test_acc_of_exported_seed": first.metrics.get("test_acc"),
            "run_of_exported_seed": first.run_id, "final_run_ids": row.run_ids, "parent_run_id": parent,
            "experiment_id": exp_id,
        })
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(index[0]) if index else ["cell"])
    w.writeheader()
    for item in index:
        w.writerow({**item, "final_run_ids": " ".join(item["final_run_ids"])})
    (out_dir / "index.csv").write_text(buf.getvalue())
    tracking.log_files(parent, {**files, "index.json": (out_dir / "index.json").read_text(),
                                "index.csv": buf.getvalue()}, artifact_path="export")
    return index
