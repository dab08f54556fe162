"""Regenerate the README's images from a real quickstart run:

    .venv/bin/python docs/make_images.py            # runs the quickstart in a temp dir (a few minutes)
    .venv/bin/python docs/make_images.py --work DIR # reuse DIR/runs + DIR/mlruns of an earlier run

Writes docs/images/: every figure of `pal-study report quickstart --out` and two screenshots of
`pal-study ui --study quickstart` in headless Chromium (the cells table and the charts view).
Needs Debian's /usr/bin/chromium and playwright (pip install -e '.[test]').
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
CLI = [sys.executable, "-m", "pal_study.cli"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="directory with runs/ and mlruns/ of a finished quickstart")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pal-images-"))
    uri = f"sqlite:///{work.resolve()}/mlruns/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if not (work / "runs" / "quickstart" / "summary.json").exists():
        subprocess.run(
            [*CLI, "run", "quickstart", "--progress", "plain", "--tracking-uri", uri], cwd=work, env=env, check=True
        )
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    report = work / "report"
    subprocess.run(
        [*CLI, "report", "quickstart", "--out", str(report), "--tracking-uri", uri], cwd=work, env=env, check=True
    )
    for png in sorted(report.glob("*.png")):
        shutil.copy(png, OUT / png.name)

    port = _port()
    ui = subprocess.Popen(
        [*CLI, "ui", "--study", "quickstart", "--port", str(port), "--tracking-uri", uri],
        cwd=work,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        urls: dict[str, str] = {}
        deadline = time.time() + 120
        while len(urls) < 2 and time.time() < deadline:
            line = ui.stderr.readline()
            for kind in ("table", "charts"):
                if f"({kind})" in line:
                    urls[kind] = re.search(r"http://\S+", line).group(0)
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            for kind, url in urls.items():
                page.goto(url)
                page.get_by_text("14 matching runs").first.wait_for()
                page.get_by_text("Δ test acc" if kind == "table" else "Test accuracy per cell").first.wait_for()
                close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")  # the Assistant panel
                if close.count() and close.first.is_visible():
                    close.first.click()
                page.wait_for_timeout(1500)
                page.screenshot(path=str(OUT / f"mlflow_cells_{kind}.png"))
            browser.close()
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)
    print(f"wrote {len(list(OUT.glob('*.png')))} images to {OUT} (from {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
