"""Writers for the on-disk formats torchvision reads: MNIST idx files and CIFAR python batches.

For tests, benchmarks and for bringing one's own arrays into a ``root`` that
``build_dataset("mnist" | "cifar10" | "cifar100", root=...)`` loads through torchvision.

CIFAR: the official batches are Python-2 pickles whose dict keys and class names are py2 ``str``.
Python 3 reads them as ``str`` with ``encoding="latin1"`` (what torchvision does) and as ``bytes``
(``b'data'``, ``b'labels'``, as the CIFAR page documents) with ``encoding="bytes"``. A Python 3
pickle of ``str`` keys would only satisfy the first, so keys are written with the py2 string opcode
to match the real files either way.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

_IDX_TYPES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an idx file: magic 0x0000TTNN (type, ndims), big-endian uint32 dims, data."""
    a = np.asarray(array)
    if a.dtype.kind in "iuf" and a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder(">"))
    code = _IDX_TYPES.get(a.dtype)
    if code is None:
        raise ValueError(f"idx cannot hold dtype {array.dtype}; use one of uint8, int8, int16, int32, float32, float64")
    if not 1 <= a.ndim <= 255:
        raise ValueError(f"idx needs 1..255 dimensions, got {a.ndim}")
    with open(path, "wb") as f:
        f.write(struct.pack(">I", (code << 8) | a.ndim))
        f.write(struct.pack(f">{a.ndim}I", *a.shape))
        f.write(np.ascontiguousarray(a).tobytes())


def write_mnist(
    root: str | os.PathLike[str],
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
) -> Path:
    """Write ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uint8, images N×28×28)."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, images, labels in (("train", train_images, train_labels), ("t10k", test_images, test_labels)):
        images = np.asarray(images, dtype=np.uint8)
        labels = np.asarray(labels, dtype=np.uint8)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{prefix}: need images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}")
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


class _Py2Str(bytes):
    """Bytes that pickle as a Python 2 ``str`` (SHORT_BINSTRING/BINSTRING)."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us add one opcode writer
    # typeshed's table has its writers take an Unpickler; they take the pickler.
    dispatch: ClassVar[dict[type, Callable[[Any, Any], None]]] = pickle._Pickler.dispatch.copy()
    write: Callable[[bytes], object]  # bound per instance by _Pickler.__init__ (typeshed omits it)

    def _save_py2str(self, obj: _Py2Str) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + bytes(obj))

    dispatch[_Py2Str] = _save_py2str


def _py2(obj: Any) -> Any:
    """Turn str (and str inside lists/dict keys) into py2 strings, leaving other objects alone."""
    if isinstance(obj, str):
        return _Py2Str(obj.encode("latin1"))
    if isinstance(obj, list):
        return [_py2(v) for v in obj]
    if isinstance(obj, dict):
        return {_py2(k): _py2(v) for k, v in obj.items()}
    return obj


def dump_py2_pickle(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Pickle ``obj`` (protocol 2) with its strings as py2 ``str``, like the CIFAR release files."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(_py2(obj))
    Path(path).write_bytes(buf.getvalue())


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images, dtype=np.uint8)
    if a.ndim != 4 or a.shape[1:] != (3, 32, 32):
        raise ValueError(f"CIFAR images must be uint8 (N, 3, 32, 32) (channel-first), got {a.shape}")
    return a.reshape(a.shape[0], 3072)  # row layout: 1024 red, 1024 green, 1024 blue, row-major


def write_cifar10(
    root: str | os.PathLike[str],
    train_images: np.ndarray,
    train_labels: Sequence[int],
    test_images: np.ndarray,
    test_labels: Sequence[int],
    label_names: Sequence[str] | None = None,
) -> Path:
    """Write ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    The training set is split over the five batches as evenly as possible.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rows = _cifar_rows(train_images)
    labels = [int(v) for v in train_labels]
    names = (
        list(label_names)
        if label_names is not None
        else ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    )
    for i, part in enumerate(np.array_split(np.arange(rows.shape[0]), 5), start=1):
        dump_py2_pickle(
            folder / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": [labels[j] for j in part],
                "data": rows[part],
                "filenames": [f"img_{j}.png" for j in part],
            },
        )
    test_rows = _cifar_rows(test_images)
    dump_py2_pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(v) for v in test_labels],
            "data": test_rows,
            "filenames": [f"test_{j}.png" for j in range(test_rows.shape[0])],
        },
    )
    dump_py2_pickle(
        folder / "batches.meta",
        {"label_names": names, "num_cases_per_batch": int(np.ceil(rows.shape[0] / 5)), "num_vis": 3072},
    )
    return folder


def write_cifar100(
    root: str | os.PathLike[str],
    train_images: np.ndarray,
    train_labels: Sequence[int],
    test_images: np.ndarray,
    test_labels: Sequence[int],
) -> Path:
    """Write ``<root>/cifar-100-python/{train, test, meta}`` (coarse label = fine // 5 here)."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        rows = _cifar_rows(images)
        fine = [int(v) for v in labels]
        dump_py2_pickle(
            folder / name,
            {
                "filenames": [f"{name}_{j}.png" for j in range(rows.shape[0])],
                "batch_label": f"{name} batch",
                "fine_labels": fine,
                "coarse_labels": [v // 5 for v in fine],
                "data": rows,
            },
        )
    dump_py2_pickle(
        folder / "meta",
        {
            "fine_label_names": [f"class_{i}" for i in range(100)],
            "coarse_label_names": [f"superclass_{i}" for i in range(20)],
        },
    )
    return folder
