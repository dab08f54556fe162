"""A tracking store in plain files: ``--tracking-uri jsonl:///path/to/dir``.

Layout under the root directory::

    <experiment dir>/experiment.json            {"experiment_id", "name", "tags"}
    <experiment dir>/<run id>/run.jsonl         the run's records, one JSON object a line
    <experiment dir>/<run id>/artifacts/<path>  its files

A run's state is its records replayed in order: ``create`` (name, start time, tags), ``log``
(metrics as [key, value, step], params, tags), ``status``, ``delete``. Each record is appended with
one ``write`` to a file opened for appending, so a reader (a report while a study runs) sees whole
records; a record torn by a writer killed mid-write is skipped. Readers replay
only what was appended since they last looked. Needs no server and nothing but the standard
library: a study's record can be read with ``jq`` or copied with ``cp``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pal_study.errors import ConfigError
from pal_study.tracking.base import Experiment, MetricPoint, Run
from pal_study.tracking.names import PARENT_TAG, RUNNING

SCHEME = "jsonl://"
RUN_FILE = "run.jsonl"
EXPERIMENT_FILE = "experiment.json"


def is_jsonl_uri(uri: str) -> bool:
    return uri.startswith(SCHEME)


class _Replayed:
    """A run file read up to ``offset``: the run it describes and every metric point."""

    def __init__(self, run: Run):
        self.run = run
        self.offset = 0
        self.history: dict[str, list[tuple[int, float]]] = {}


class JsonlStore:
    """A tracking store in JSON-lines files under one directory."""

    def __init__(self, uri: str):
        if not is_jsonl_uri(uri):
            raise ConfigError(f"not a JSON-lines store URI: {uri!r} (jsonl:///path/to/dir)", key="--tracking-uri")
        self.uri = uri
        self.root = Path(uri[len(SCHEME) :]).expanduser()
        self._cache: dict[Path, _Replayed] = {}
        self._paths: dict[str, Path] = {}

    def check(self) -> None:
        """The root (or, before the first write creates it, its nearest existing folder) is a
        writable folder. Creates nothing: a report that reads a store must not make one."""
        where = self.root.absolute()
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
            raise ConfigError(
                f"cannot write the tracking store {self.uri!r}: {where} is not a writable folder",
                key="--tracking-uri / MLFLOW_TRACKING_URI",
            )

    # -- experiments ----------------------------------------------------------------------------
    def _experiment_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if (p / EXPERIMENT_FILE).is_file())

    def find_experiment(self, name: str) -> Experiment | None:
        path = self.root / _experiment_dirname(name) / EXPERIMENT_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return Experiment(data["experiment_id"], data["name"], dict(data.get("tags") or {}))

    def experiment_id(self, name: str) -> str:
        exp = self.find_experiment(name)
        if exp is not None:
            return exp.experiment_id
        exp_id = _experiment_dirname(name)
        _write_atomic(self.root / exp_id / EXPERIMENT_FILE, json.dumps({"experiment_id": exp_id, "name": name}))
        return exp_id

    def set_study_view(
        self, experiment_id: str, factors: list[str], searched: list[str], titles: Sequence[str] = ()
    ) -> None:
        """No UI to present the study in: its runs carry every tag a reader filters by."""

    # -- writes ---------------------------------------------------------------------------------
    def create_run(
        self,
        experiment_id: str,
        name: str,
        tags: Mapping[str, Any],
        *,
        parent_id: str | None = None,
        start_time: int | None = None,
    ) -> str:
        run_id = uuid.uuid4().hex
        all_tags = {**({PARENT_TAG: parent_id} if parent_id else {}), **tags}
        path = self.root / experiment_id / run_id / RUN_FILE
        path.parent.mkdir(parents=True)
        self._append(
            path,
            {
                "op": "create",
                "run_id": run_id,
                "experiment_id": experiment_id,
                "name": name,
                "start_time": int(start_time if start_time is not None else time.time() * 1000),
                "tags": {k: str(v) for k, v in all_tags.items()},
            },
        )
        return run_id

    def set_status(self, run_id: str, status: str) -> None:
        end = None if status == RUNNING else int(time.time() * 1000)
        self._append(self._run_file(run_id), {"op": "status", "status": status, "end_time": end})

    def delete_run(self, run_id: str) -> None:
        self._append(self._run_file(run_id), {"op": "delete"})

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable[MetricPoint] = (),
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        record: dict[str, Any] = {"op": "log", "time": int(time.time() * 1000)}
        points = [[k, float(v), int(step)] for k, v, step in metrics]
        if points:
            record["metrics"] = points
        if params:
            record["params"] = {k: str(v) for k, v in params.items()}
        if tags:
            record["tags"] = {k: str(v) for k, v in tags.items()}
        if len(record) > 2:
            self._append(self._run_file(run_id), record)

    def log_files(self, run_id: str, files: Mapping[str, bytes | str], artifact_path: str | None = None) -> None:
        base = self._run_file(run_id).parent / "artifacts"
        for name, content in files.items():
            rel = f"{artifact_path}/{name}" if artifact_path else name
            _write_atomic(_inside(base, rel), content)

    def log_table(self, run_id: str, path: str, table: Mapping[str, list]) -> None:
        """The layout MLflow's ``log_table`` writes (``columns``, ``data`` by row)."""
        columns = list(table)
        rows = [list(row) for row in zip(*(table[c] for c in columns), strict=True)]
        self.log_files(run_id, {path: json.dumps({"columns": columns, "data": rows}, default=str)})

    # -- reads ----------------------------------------------------------------------------------
    def read_file(self, run_id: str, path: str) -> bytes | None:
        p = _inside(self._run_file(run_id).parent / "artifacts", path)
        return p.read_bytes() if p.is_file() else None

    def get_run(self, run_id: str) -> Run:
        return _copy(self._replay(self._run_file(run_id)).run)

    def find_runs(
        self, experiment_id: str, tags: Mapping[str, str], *, newest_first: bool = False, limit: int | None = None
    ) -> list[Run]:
        exp_dir = self.root / experiment_id
        runs = []
        for path in sorted(exp_dir.glob(f"*/{RUN_FILE}")) if exp_dir.is_dir() else []:
            run = self._replay(path).run
            if not run.deleted and all(run.tags.get(k) == str(v) for k, v in tags.items()):
                runs.append(_copy(run))
        runs.sort(key=lambda r: r.start_time, reverse=newest_first)
        return runs[:limit] if limit is not None else runs

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return list(self._replay(self._run_file(run_id)).history.get(key, []))

    # -- files ----------------------------------------------------------------------------------
    def _run_file(self, run_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{32}", run_id):
            raise ValueError(f"not a run id of this store: {run_id!r}")
        if run_id in self._paths:
            return self._paths[run_id]
        for exp_dir in self._experiment_dirs():
            path = exp_dir / run_id / RUN_FILE
            if path.is_file():
                self._paths[run_id] = path
                return path
        raise KeyError(f"no run {run_id} in {self.uri}")

    @staticmethod
    def _append(path: Path, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n").encode()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # after a record torn by a killed writer: on a line of its own
            os.write(fd, line)
        finally:
            os.close(fd)

    def _replay(self, path: Path) -> _Replayed:
        state = self._cache.get(path)
        with path.open("rb") as f:
            f.seek(state.offset if state else 0)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # whole records only
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # torn by a writer killed mid-record
            if state is None:
                state = _Replayed(
                    Run(
                        run_id=record["run_id"],
                        experiment_id=record["experiment_id"],
                        name=record["name"],
                        status=RUNNING,
                        start_time=record["start_time"],
                        tags=dict(record["tags"]),
                    )
                )
                continue
            _apply(state, record)
        if state is None:
            raise KeyError(f"run file {path} holds no run")
        state.offset += end
        self._cache[path] = state
        return state


def _apply(state: _Replayed, record: dict[str, Any]) -> None:
    run, op = state.run, record["op"]
    if op == "log":
        for key, value, step in record.get("metrics", ()):
            hist = state.history.setdefault(key, [])
            hist.append((step, value))
            # The latest value is the one at the highest step (MLflow's rule), the last logged on a tie.
            if max(s for s, _ in hist) == step:
                run.metrics[key] = value
        run.params.update(record.get("params", {}))
        run.tags.update(record.get("tags", {}))
    elif op == "status":
        run.status = record["status"]
    elif op == "delete":
        run.deleted = True


def _copy(run: Run) -> Run:
    """What a caller gets: its own dicts, never the replay's."""
    return replace(run, tags=dict(run.tags), params=dict(run.params), metrics=dict(run.metrics))


def _experiment_dirname(name: str) -> str:
    """A directory name for an experiment: readable, and distinct for distinct names."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:60] or "experiment"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _inside(base: Path, rel: str) -> Path:
    path = (base / rel).resolve()
    if not path.is_relative_to(base.resolve()):
        raise ValueError(f"artifact path {rel!r} leaves the run's folder")
    return path


def _write_atomic(path: Path, content: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
