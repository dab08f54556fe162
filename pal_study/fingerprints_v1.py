"""Version 1 fingerprints, kept only to verify results stored before fingerprints were versioned.

Version 1 hashed the dumps of the config models as they were then, which differed from today's
plain dumps in a few keys: sections and options added later were left out at their defaults (so
that existing results kept their fingerprint), and the pruner and sampler carried the options of a
single flat model they once were. :func:`old_config` and :func:`old_study` derive that old dump
from today's plain one; the values here are history, frozen, and must not follow today's defaults.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Left out of a v1 dump of data.* when equal to this (data.mnist1d at its default then).
_V1_DATA_DEFAULT_SECTIONS: dict[str, Any] = {"mnist1d": {"num_samples": 5000}}
# Left out of a v1 dump of loss.* when unset (deferred re-weighting).
_V1_LOSS_UNSET = ("drw_epoch", "drw_beta")
# A v1 dump of budget.pruner / budget.sampler: {"name": ..., **these, **its own options}.
_V1_PRUNER_KEYS: dict[str, Any] = {
    "n_startup_trials": 2,
    "n_warmup_steps": 2,
    "interval_steps": 1,
    "percentile": 50.0,
    "min_resource": "auto",
    "reduction_factor": 3,
}
_V1_SAMPLER_KEYS: dict[str, Any] = {"seed": 0, "n_startup_trials": 4}


def old_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial config's v1 dump, from its plain ``model_dump(mode="json")``."""
    out = dict(config)
    data = dict(out.get("data") or {})
    for key, default in _V1_DATA_DEFAULT_SECTIONS.items():
        if data.get(key) == default:
            data.pop(key)
    loss = dict(out.get("loss") or {})
    for key in _V1_LOSS_UNSET:
        if key in loss and loss[key] is None:
            loss.pop(key)
    if "data" in out:
        out["data"] = data
    if "loss" in out:
        out["loss"] = loss
    return out


def old_study(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A study fingerprint's v1 payload, from its plain one (``store.fingerprint_payload``)."""
    out = dict(payload)
    out["cells"] = [{**c, "config": old_config(c["config"])} for c in payload["cells"]]
    out["pruner"] = {"name": payload["pruner"]["name"], **_V1_PRUNER_KEYS, **payload["pruner"]}
    out["sampler"] = {"name": payload["sampler"]["name"], **_V1_SAMPLER_KEYS, **payload["sampler"]}
    return out


def fingerprint_v1(payload: Mapping[str, Any]) -> str:
    """The v1 fingerprint of a study (16 hex characters) from its plain fingerprint payload."""
    return hashlib.sha256(json.dumps(old_study(payload), sort_keys=True).encode()).hexdigest()[:16]


def config_hash_v1(config: Mapping[str, Any]) -> str:
    """The v1 checkpoint hash of a trial from its plain resolved config dump, ``threads`` and
    ``device`` already left out (as the current hash leaves them out)."""
    body = json.dumps(old_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()
