"""Where the driver's memory goes during a long study: the load study of load.py with
`tracemalloc` started after FROM completed trials and read after TO, then `malloc_trim(0)`.

    .venv/bin/python benchmarks/memory_probe.py                        # one Tuner for all trials, ~4 min
    .venv/bin/python benchmarks/memory_probe.py --trials-per-tuner 100 # the bounded runner

Reports the Python allocations made between the two points that are still alive at the second
(the top sites by the innermost pal_study / site-packages frame), the RSS at both points, and the
RSS after `malloc_trim(0)`: if trimming gives nothing back, the growth is live objects rather
than memory the allocator kept. Writes benchmarks/results/memory_probe[_<trials-per-tuner>].json.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import tempfile
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import load  # noqa: E402  (the same study and RSS reader)


def _site(tb: tracemalloc.Traceback) -> str:
    frames = [f for f in tb if "site-packages" in f.filename or "pal_study" in f.filename]
    f = (frames or list(tb))[-1]  # frames run oldest to newest: the innermost of ours/libraries
    name = f.filename.split("site-packages/")[-1]
    return f"{name}:{f.lineno}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials-per-tuner", type=int, default=1000)
    ap.add_argument("--from", dest="start", type=int, default=100)
    ap.add_argument("--to", dest="stop", type=int, default=400)
    args = ap.parse_args()

    from rich.console import Console

    from pal_study.study import load_study
    from pal_study.study import progress as progress_mod
    from pal_study.study.runner import run_study

    study = load_study(ROOT / "studies/quickstart.yaml", load.OVERRIDES)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    probe: dict = {}
    original = progress_mod.StudyProgress.__call__

    def spy(self, event):
        original(self, event)
        n = self.counts["completed"]
        if getattr(event, "outcome", None) != "completed":
            return
        if n == args.start:
            gc.collect()
            probe["rss_from"] = load._current_rss_mb()
            tracemalloc.start(10)
        elif n == args.stop:
            gc.collect()
            probe["snapshot"] = tracemalloc.take_snapshot()
            probe["rss_to"] = load._current_rss_mb()
            tracemalloc.stop()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            probe["rss_to_after_trim"] = load._current_rss_mb()

    progress_mod.StudyProgress.__call__ = spy
    run_study(
        study,
        runs_dir=tmp / "runs",
        console=Console(stderr=True, quiet=True),
        tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db",
        trials_per_tuner=args.trials_per_tuner,
    )

    by_site: dict[str, int] = {}
    for stat in probe["snapshot"].statistics("traceback"):
        by_site[_site(stat.traceback)] = by_site.get(_site(stat.traceback), 0) + stat.size
    top = sorted(by_site.items(), key=lambda kv: -kv[1])[:10]
    total = sum(by_site.values())
    n = args.stop - args.start
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "trials_per_tuner": args.trials_per_tuner,
        "between_completions": [args.start, args.stop],
        "python_alive_mb": total / 1e6,
        "python_alive_mb_per_trial": total / 1e6 / n,
        "rss_mb": {k: probe[k] for k in ("rss_from", "rss_to", "rss_to_after_trim")},
        "top_sites_mb": {k: v / 1e6 for k, v in top},
    }
    print(
        f"{args.trials_per_tuner} trials per Tuner; completions {args.start} -> {args.stop}: Python allocations "
        f"still alive {total / 1e6:.1f} MB ({1000 * total / 1e6 / n:.0f} kB per trial); RSS "
        f"{probe['rss_from']:.0f} -> {probe['rss_to']:.0f} MB, {probe['rss_to_after_trim']:.0f} MB after malloc_trim"
    )
    for site, size in top:
        print(f"  {size / 1e6:6.2f} MB  {site}")
    suffix = "" if args.trials_per_tuner == 1000 else f"_{args.trials_per_tuner}"
    out = ROOT / "benchmarks" / "results" / f"memory_probe{suffix}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
