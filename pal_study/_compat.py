"""Every use of another library's private or undocumented behaviour, in one place.

pal-study otherwise uses public APIs only. Each seam below says why no public route exists and
which versions it was checked against; ``tests/test_compat.py`` exercises each one, so a
dependency upgrade that breaks a seam fails there, under the seam's name.

Checked with: ray 2.60.0, optuna 5.0.0, mlflow 3.17.2, torchvision 0.29.1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # The type of what an Optuna storage's get_all_studies returns; optuna.study does not export
    # it (type-checking only: nothing imports it at run time).
    from optuna.study._frozen import FrozenStudy as FrozenStudy

# -- Ray ------------------------------------------------------------------------------------------


def keep_local_ray_on_loopback() -> None:
    """A local Ray advertises the machine's outward address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    is 0 when Ray is imported; the runner sets the variable first, and this also corrects the
    constant Ray read if something imported Ray earlier. No public switch exists."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def drop_bulky_results_callback(bulky_keys: Callable[[Mapping[str, Any]], Iterable[str]]) -> Any:
    """A Ray Tune callback that deletes a trial report's bulky payloads (reliability PNG, geometry,
    history, held-back epochs: the keys ``bulky_keys(result)`` names) from each result once
    the searcher has taken them. It relies on Tune handing
    ``Callback.on_trial_result`` the very dict that becomes ``trial.last_result`` (undocumented):
    Tune keeps every trial's last result until ``fit()`` returns, so without this the driver's
    memory grows with the payloads of every trial of a Tuner."""
    from ray.tune import Callback

    class DropBulkyResults(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            for key in bulky_keys(result):
                del result[key]

    return DropBulkyResults()


def searcher_pickle_state(searcher: Any) -> dict[str, Any]:
    """What a Ray Tune ``Searcher`` must keep when Tune pickles the experiment (``tuner.pkl``):
    the base class stores metric and mode as ``_metric``/``_mode``, and pal-study's searcher holds
    unpicklable state (storages, callbacks) it never restores from Tune."""
    return {"_metric": searcher.metric, "_mode": searcher.mode}


_KV_NAMESPACE = "pal_study"


def kv_put(key: str, value: str) -> None:
    """Put a short string into the Ray cluster's key-value store (the GCS), where every worker
    can read it: how the study's driver tells a running trial pack which member comes next or that
    a member is pruned. Ray Tune gives a function trainable no way to hear back from the driver
    except a stop of the whole trial, and ``ray.experimental.internal_kv`` (what Ray's own
    libraries use for this) is not documented API."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=_KV_NAMESPACE)


def kv_get(key: str) -> str | None:
    """What :func:`kv_put` stored under ``key`` (None: nothing)."""
    from ray.experimental import internal_kv

    value = internal_kv._internal_kv_get(key, namespace=_KV_NAMESPACE)
    return None if value is None else value.decode()


def kv_delete(key: str) -> None:
    """Forget ``key`` (nothing stored: nothing to do)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(key, namespace=_KV_NAMESPACE)


# -- Optuna ---------------------------------------------------------------------------------------


def resume_trial(study: Any, storage: Any, number: int) -> Any:
    """An ``optuna.trial.Trial`` for trial ``number`` of ``study`` left RUNNING (a driver killed
    mid-trial): ask() always makes a new trial, and Optuna's docs call the Trial constructor not
    for direct use; it is the only way to report to and tell an existing trial. The trial's id
    comes from the storage's public lookups."""
    import optuna

    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    return optuna.trial.Trial(study, trial_id)


def journal_lock_path(journal: str | os.PathLike[str]) -> str:
    """The file Optuna's ``JournalFileSymlinkLock`` creates while it appends to ``journal`` (its
    suffix is a module constant, not API); the runner removes a stale one at start."""
    from optuna.storages.journal._file import LOCK_FILE_SUFFIX

    return os.fspath(journal) + LOCK_FILE_SUFFIX


# -- torchvision ----------------------------------------------------------------------------------


def lenient_cifar(base: type[Any]) -> type[Any]:
    """A torchvision CIFAR class that accepts well-formed files whose md5 differs from the release.

    torchvision checks the md5 of every batch file (and of the meta file) in private methods
    (``_check_integrity``, ``_load_meta``) with no public switch, which rejects any locally built
    or re-exported root even when its files are in the real format. Here ``download()`` keeps the
    strict check — a root that fails it is downloaded again and the archive is verified — while
    loading an existing root falls back to "all files present", with a warning. Reading the
    batches unpickles them: pickle is the CIFAR release format, so this is inherent to it; only
    point ``root`` at files you trust.
    """
    import logging
    import pickle

    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    log = logging.getLogger("pal_study.data.sources")

    class Lenient(base):
        def _files_present(self) -> bool:
            names = [f for f, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in names)

        def _check_integrity(self) -> bool:
            if base._check_integrity(self):
                return True
            if self._files_present():
                log.warning(
                    "%s: files under %s differ from the official release (md5); loading them anyway",
                    base.__name__,
                    os.path.join(self.root, self.base_folder),
                )
                return True
            return False

        def download(self) -> None:
            if base._check_integrity(self):
                return
            download_and_extract_archive(self.url, self.root, filename=self.filename, md5=self.tgz_md5)

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            if not os.path.isfile(path):
                raise RuntimeError(f"Dataset metadata file not found: {path}")
            if not check_integrity(path, self.meta["md5"]):
                log.debug("%s: meta file md5 differs from the official release", path)
            with open(path, "rb") as infile:
                data = pickle.load(infile, encoding="latin1")  # CIFAR's release format (see above)
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {_class: i for i, _class in enumerate(self.classes)}

    Lenient.__name__ = Lenient.__qualname__ = f"Lenient{base.__name__}"
    return Lenient
