"""k-means for codebook methods (iPQ blocks, KQ kernels): vectorised numpy, k-means++ seeding, empty-cluster
splitting. One implementation shared by every method.

References: Stock et al. 2020, arXiv 1907.05686 (iPQ; empty clusters split from the most populated one);
Arthur & Vassilvitskii 2007 (k-means++).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import numpy as np

__all__ = ["KMeansResult", "kmeans", "assign", "clamp_k"]


class KMeansResult(NamedTuple):
    centroids: np.ndarray    # (k, d) float32
    assignments: np.ndarray  # (n,) int32
    inertia: float           # sum of squared distances to the assigned centroid


def _sq_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2, computed in float64 to keep ties stable for integer-valued data.
    x64, c64 = x.astype(np.float64), centroids.astype(np.float64)
    d = (x64 * x64).sum(1)[:, None] - 2.0 * x64 @ c64.T + (c64 * c64).sum(1)[None, :]
    return np.maximum(d, 0.0)


def assign(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest centroid for every row of ``x`` (ties: lowest index)."""
    out = np.empty(len(x), dtype=np.int32)
    for start in range(0, len(x), chunk):
        out[start:start + chunk] = np.argmin(_sq_distances(x[start:start + chunk], centroids), axis=1)
    return out


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centroids = [x[rng.integers(len(x))]]
    closest = _sq_distances(x, np.asarray(centroids))[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        index = rng.choice(len(x), p=closest / total) if total > 0 else rng.integers(len(x))
        centroids.append(x[index])
        closest = np.minimum(closest, _sq_distances(x, x[index:index + 1])[:, 0])
    return np.asarray(centroids, dtype=np.float32)


def clamp_k(k: int, n: int, min_blocks_per_centroid: int = 4) -> int:
    """``k`` limited to ``n // min_blocks_per_centroid`` (at least 1): small layers get fewer centroids."""
    return int(max(1, min(k, n // min_blocks_per_centroid)))


def kmeans(x: np.ndarray, k: int, n_iter: int = 20, seed: int = 0, init: Union[str, np.ndarray] = "kmeans++",
           tol: float = 0.0, rng: Optional[np.random.Generator] = None) -> KMeansResult:
    """Lloyd's k-means on the rows of ``x``.

    Args:
        x: (n, d) data (blocks or kernels).
        k: number of centroids, 1 <= k <= n.
        n_iter: EM iterations (the iPQ reference uses 15-20).
        seed: seed of the initialisation and of the split perturbations.
        init: "kmeans++", "random" (k distinct rows, as the reference does) or a (k, d) array of starting
            centroids (warm start, e.g. the previous codebook of weights that have moved a little).
        tol: stop early when the inertia improves by less than this fraction.

    An empty cluster takes the centroid of the most populated cluster plus a tiny perturbation (and that one
    moves by minus the same), so that the next assignment step splits it.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"`x` must be a non-empty 2-D array (n, d). Received: x.shape={x.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(x):
        raise ValueError(f"`k` must be an int in [1, n={len(x)}] (fewer centroids than rows). Received: k={k!r}")
    rng = rng or np.random.default_rng(seed)
    if not isinstance(init, str):
        start = np.asarray(init, dtype=np.float32)
        if start.shape != (int(k), x.shape[1]):
            raise ValueError(f"`init` as an array must have shape (k, d) = ({k}, {x.shape[1]}). "
                             f"Received: init.shape={start.shape}")
        centroids = start.copy()
    elif init not in ("kmeans++", "random"):
        raise ValueError(f"`init` must be 'kmeans++', 'random' or a (k, d) array. Received: init={init!r}")
    elif init == "kmeans++":
        centroids = _kmeans_pp(x, int(k), rng)
    else:
        centroids = x[rng.choice(len(x), size=int(k), replace=False)].copy()
    previous = np.inf
    assignments = assign(x, centroids)
    for _ in range(max(1, n_iter)):
        counts = np.bincount(assignments, minlength=k)
        sums = np.zeros_like(centroids, dtype=np.float64)
        np.add.at(sums, assignments, x)
        nonempty = counts > 0
        centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        for empty in np.flatnonzero(~nonempty):
            big = int(np.argmax(np.bincount(assignments, minlength=k)))
            scale = 1e-6 * (np.abs(centroids[big]).max() + 1e-12)
            noise = rng.normal(size=centroids.shape[1]).astype(np.float32) * scale
            centroids[empty] = centroids[big] + noise
            centroids[big] = centroids[big] - noise
            # Count half of its rows as moved, so that a second empty cluster splits another big one; the
            # assignment step below recomputes the real assignment.
            assignments[np.flatnonzero(assignments == big)[::2]] = empty
        assignments = assign(x, centroids)
        inertia = float(((x - centroids[assignments]) ** 2).sum())
        if tol > 0 and previous - inertia <= tol * max(previous, 1e-12):
            break
        previous = inertia
    inertia = float(((x - centroids[assignments]) ** 2).sum())
    return KMeansResult(centroids.astype(np.float32), assignments.astype(np.int32), inertia)
