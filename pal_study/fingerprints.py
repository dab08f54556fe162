"""Fingerprints of what stored results were computed from: a study's cells (``study.json``, checked
on resume) and a trial's resolved config (its checkpoint's config hash).

Both hash one canonical text: the plain, complete ``model_dump(mode="json")`` of the models (every
key present, defaults included) under ``fingerprint_version``, as JSON with sorted keys. A new
config option therefore changes every fingerprint once, which is why the version is part of the
text: results stored under an older version are verified with that version's computation
(:mod:`pal_study.fingerprints_v1`) and then re-stamped with the current one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

FINGERPRINT_VERSION = 2


def canonical(dump: Mapping[str, Any]) -> str:
    """The text that is hashed: ``{"fingerprint_version": 2, **dump}`` as compact, key-sorted JSON."""
    if "fingerprint_version" in dump:
        raise ValueError("a dump to fingerprint must not carry its own fingerprint_version")
    return json.dumps({"fingerprint_version": FINGERPRINT_VERSION, **dump}, sort_keys=True, separators=(",", ":"))


def digest(dump: Mapping[str, Any]) -> str:
    """sha256 (hex, 64 characters) of :func:`canonical` ``(dump)``."""
    return hashlib.sha256(canonical(dump).encode()).hexdigest()
