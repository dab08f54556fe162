"""What a tuning trial's MLflow details cost its slot: ``trainable.run_one`` on the quickstart's
first cell with the details as finals send them (reliability PNG drawn in the worker), as tuning
trials send them now (the reliability bins, no PNG), and without details, interleaved rounds on
one warm process (1 torch thread, as a 1-CPU trial slot). Per round and variant: wall time of
``run_one`` minus the trainer's own epoch time (train + eval) = the trial's overhead around its
epochs.

    .venv/bin/python benchmarks/trial_details.py             # ~1 min
    .venv/bin/python benchmarks/trial_details.py --rounds 3  # smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()

    import torch

    from pal_study.study import load_study
    from pal_study.study.engine import StudySearcher
    from pal_study.study.store import StudyStore
    from pal_study.study.trainable import run_one

    torch.set_num_threads(1)
    study = load_study(ROOT / "studies" / "quickstart.yaml")
    with tempfile.TemporaryDirectory(prefix="bench-details-") as tmp:
        searcher = StudySearcher(study, StudyStore(study, Path(tmp)), slots=2)
        cfg = searcher.trial_config(study.cells[0], {})
    variants = {
        "png (finals)": {"with_details": True, "details_png": True},
        "bins (tuning trials now)": {"with_details": True, "details_png": False},
        "no details": {"with_details": False},
    }
    raw: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for r in range(a.rounds + 1):  # round 0 warms the process (imports, data cache, matplotlib)
        order = list(variants)[r % 3 :] + list(variants)[: r % 3]
        for name in order:
            spent = [0.0]

            def on_epoch(m, spent=spent) -> None:
                spent[0] += m.train_time_s + m.eval_time_s

            t0 = time.perf_counter()
            out = run_one(cfg, on_epoch, **variants[name])
            wall = time.perf_counter() - t0
            if r:
                raw[name].append(
                    {
                        "wall_s": wall,
                        "epoch_s": spent[0],
                        "overhead_s": wall - spent[0],
                        "payload_bytes": len(out.to_tune().get("details_json", "")),
                    }
                )
    rows = []
    summary = {}
    for name, reps in raw.items():
        over = _bench.median([x["overhead_s"] for x in reps])
        summary[name] = {
            "overhead_s": over,
            "epoch_s": _bench.median([x["epoch_s"] for x in reps]),
            "payload_bytes": reps[0]["payload_bytes"],
        }
        rows.append(
            [name, f"{1000 * over:.1f} ms", f"{summary[name]['epoch_s']:.3f} s", f"{summary[name]['payload_bytes']:,}"]
        )
    print(
        f"{study.cells[0].label}, {cfg['optim']['epochs']} epochs, {cfg['model']['arch']}, "
        f"median of {a.rounds} interleaved rounds"
    )
    print(_bench.table(["details", "overhead around the epochs", "epoch time", "details payload (bytes)"], rows))
    png, bins = summary["png (finals)"]["overhead_s"], summary["bins (tuning trials now)"]["overhead_s"]
    print(f"drawing the PNG costs {1000 * (png - bins):.1f} ms per trial")
    path = _bench.write_json(
        "trial_details",
        a.rounds < 15,
        {
            "command": " ".join([".venv/bin/python", "benchmarks/trial_details.py", *sys.argv[1:]]),
            "machine": _bench.machine([1]),
            "cell": study.cells[0].label,
            "config": cfg,
            "summary": summary,
            "png_cost_s": png - bins,
            "raw": raw,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
