from __future__ import annotations

import os

# Tests share 2 cores: one intra-op thread per process keeps concurrent test workers from
# oversubscribing (a 3–36x slowdown measured on this kind of machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PAL_STUDY_CPUS", "1")

# Tests never write MLflow data into the working tree: one SQLite store per test process (one
# writer per file; xdist workers get their own), created once (its schema migration costs seconds).
# xdist workers inherit the controller's environment, so a store made by this file for another
# process (the controller) is replaced, not shared: two processes migrating one SQLite file race.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
if "MLFLOW_TRACKING_URI" not in os.environ or os.environ.get("PAL_TEST_MLFLOW_OWNER", _WORKER) != _WORKER:
    import tempfile

    _MLFLOW_DIR = tempfile.mkdtemp(prefix=f"pal-mlflow-{_WORKER}-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_MLFLOW_DIR}/mlflow.db"
    os.environ["PAL_TEST_MLFLOW_OWNER"] = _WORKER


import pytest  # noqa: E402  (after the environment above, which must precede every import of Ray or MLflow)


def _shared_group(item: pytest.Item) -> str | None:
    """The xdist group of a test that reads a study the suite runs once per process: the session
    fixture's name (a study several modules read) or the module (a module-scoped one). Only the
    suite's own fixtures count (their ``baseid`` is under tests/), not pytest's (tmp_path_factory)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    defs = [d for ds in info.name2fixturedefs.values() for d in ds if d.baseid.startswith("tests")]
    shared = sorted(d.argname for d in defs if d.scope in ("session", "package"))
    if shared:
        return shared[0]
    if any(d.scope == "module" for d in defs):
        return item.module.__name__ if item.module else item.nodeid
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tests that read one shared study on one xdist worker (two workers would each run
    the study), and hand out the longest work first: slow tests, then those shared studies, then
    the rest, which then fill the gaps (the suite's wall is the busier worker's)."""
    for item in items:
        group = _shared_group(item)
        if group and not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(group))

    def cost_class(item: pytest.Item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("xdist_group") else 2

    items.sort(key=cost_class)  # stable: the collection order holds within a class


@pytest.fixture
def local_ray(request: pytest.FixtureRequest):
    """One local Ray per test process, kept between the tests that ask for it: starting Ray costs
    ~4 s and stopping it ~1 s on 2 cores, more than the small studies most tests run. A study run
    finds it started and leaves it up (as with ``--address``). A test marked ``own_ray`` in a
    module that asks for it gets none (see ``_own_ray``)."""
    from tests.support import ensure_local_ray

    if not request.node.get_closest_marker("own_ray"):
        ensure_local_ray()
    yield


@pytest.fixture(autouse=True)
def _own_ray(request: pytest.FixtureRequest):
    """Tests marked ``own_ray`` get a Ray of their own: their trials read variables from the
    environment (fault injection), which Ray's workers inherit only from the process that starts
    Ray, or they start Ray with settings of their own. Autouse fixtures come first: the shared
    Ray is down before ``local_ray`` or the test run."""
    if request.node.get_closest_marker("own_ray"):
        from tests.support import stop_local_ray

        stop_local_ray()
    yield


@pytest.fixture(scope="session")
def tracked_study(tmp_path_factory):
    """The small digits study the tracking tests read (tests/tracking/): ce and ce+fnpal at 0 and
    40 % noise, 3 trials per cell, finals over seeds 0-2, two claims, tracked to its own SQLite
    store. Run once per test process; its readers share one xdist worker (see above).

    Returns (directory, tracking URI, study file); the run directory is ``directory / "runs"``."""
    from pal_study.cli import main
    from tests.support import ensure_local_ray, study_file

    tmp = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    path = study_file(
        tmp,
        "tracked",
        seeds=(0, 1, 2),
        claims=[
            {"better": "*+fnpal", "than": "*", "where": {"data.noise.rate": 0.4}},
            {"better": "ce+fnpal", "than": "ce", "metric": "ece"},
        ],
    )
    ensure_local_ray()  # before any function fixture (local_ray) runs
    assert main(["run", str(path), "--runs-dir", str(tmp / "runs"), "--tracking-uri", uri]) == 0
    return tmp, uri, path
