"""The Ray side of a study: the environment Ray Tune runs in (set before Ray is imported), a
local Ray on 127.0.0.1 or a connection to a cluster, how many trials fit at once (node by node),
and the names of Ray Tune's trial directories."""

from __future__ import annotations

import logging
import os
from typing import Any

from pal_study._compat import keep_local_ray_on_loopback
from pal_study.device import affinity_cpus
from pal_study.errors import ConfigError
from pal_study.study.spec import Study
from pal_study.study.trial import TrialJob

# Set before Ray is imported: Tune's CSV/JSON/TensorBoard loggers cost ~40 ms per trial and we
# track elsewhere; no usage reporting (the network rule); experiment snapshots rarely, since
# resume reads the Optuna journal, not Tune's snapshot.
RAY_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "600",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "1000",
    # A failed trial's closing result has no objective value: that is data, not an error.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Not a traceback per failed trial on the console: the reasons are in Optuna, MLflow, each
    # Tune trial's error.txt and the study's summary; deaths get a one-line warning.
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
}


class _NoIncompleteTrialsLine(logging.Filter):
    # Tune ends a run that had failed trials with "Trials did not complete: [ids]"; the study's
    # own table and summary say which failed and why.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trials did not complete")


def quiet_tune_summary() -> None:
    tune_log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoIncompleteTrialsLine) for f in tune_log.filters):
        tune_log.addFilter(_NoIncompleteTrialsLine())


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray on 127.0.0.1 only.

    Returns whether we started it (and so must shut it down)."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # Loopback only: Ray otherwise advertises the machine's outward address. Read when Ray
        # is imported: set before the first ``import ray``.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if not address:
        keep_local_ray_on_loopback()  # in case Ray was imported before the variable was set
    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {e}", key="--address") from None
        return True
    # "local" starts a new instance even if /tmp/ray/ray_current_cluster names an old one.
    ray.init(address="local", num_cpus=num_cpus or affinity_cpus(), **common)
    return True


def trial_slots(study: Study, max_concurrent: int | None) -> int:
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return slots_for_nodes(nodes, study, max_concurrent)


def slots_for(res: dict[str, float], study: Study, max_concurrent: int | None = None) -> int:
    """Concurrent trials one node's resources allow (``gpu: 0.25`` packs four per GPU)."""
    return slots_for_nodes([res], study, max_concurrent)


def slots_for_nodes(nodes: list[dict[str, float]], study: Study, max_concurrent: int | None = None) -> int:
    """Concurrent trials a cluster allows: a trial runs on one node, so each node counts alone
    (four 4-CPU nodes hold no 8-CPU trial, whatever their total)."""
    r = study.spec.resources
    slots = 0
    for res in nodes:
        n = int(res.get("CPU", 0) / r.cpu + 1e-9)
        if r.gpu > 0:
            n = min(n, int(res.get("GPU", 0) / r.gpu + 1e-9))
        slots += n
    if slots < 1:
        big = max(nodes, key=lambda res: (res.get("GPU", 0), res.get("CPU", 0)), default={})
        total_cpu, total_gpu = (sum(res.get(k, 0) for res in nodes) for k in ("CPU", "GPU"))
        raise ConfigError(
            f"one trial needs cpu {r.cpu:g} and gpu {r.gpu:g} on one node, but the largest node of the Ray "
            f"cluster has {big.get('CPU', 0):g} CPUs and {big.get('GPU', 0):g} GPUs ({len(nodes)} node"
            f"{'s' if len(nodes) != 1 else ''}, {total_cpu:g} CPUs and {total_gpu:g} GPUs in all)",
            source=str(study.path),
            key="resources",
        )
    return min(slots, max_concurrent) if max_concurrent else slots


def trial_name(trial: Any) -> str:
    """Ray Tune's name and directory for a trial, readable by a person following a failure:
    ``cell003-tune-0007_<tune id>`` (Optuna trial 7 of cell 3) or ``cell003-final-s0-1_<tune id>``."""
    return f"{TrialJob.from_tune(trial.config).name}_{trial.trial_id}"
