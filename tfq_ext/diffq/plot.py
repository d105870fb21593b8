"""Plot of learned bits: mean bits per weight tensor (bars) and the share of groups at each bit width (heatmap).

References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import numpy as np

__all__ = ["plot_bits"]


def plot_bits(bits: Dict[str, np.ndarray], path: Union[str, Path], title: str = "DiffQ learned bits") -> Path:
    """Writes a PNG of ``bits`` ("layer/weight" -> integer bits per group, e.g. ``learned_bits(model)``).

    Left: mean bits of each tensor. Right: fraction of each tensor's groups at 1..15 bits.

    References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987.
    """
    if not isinstance(bits, dict) or not bits:
        raise ValueError(f"`bits` must be a non-empty dict of name -> bits per group (learned_bits(model)). "
                         f"Received: bits={bits!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(bits)
    widths = np.arange(1, 16)
    shares = np.array([[np.mean(np.asarray(bits[n]) == w) for w in widths] for n in names])
    used = np.where(shares.sum(axis=0) > 0)[0]
    lo, hi = (used.min(), used.max()) if used.size else (0, 14)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.45 * len(names) + 1.8),
                                      gridspec_kw={"width_ratios": [1, 1.4]})
    means = [float(np.mean(bits[n])) for n in names]
    left.barh(range(len(names)), means, color="tab:blue")
    left.set_yticks(range(len(names)), names, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("mean bits per weight")
    for i, m in enumerate(means):
        left.annotate(f"{m:.2f}", (m, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    image = right.imshow(shares[:, lo:hi + 1], aspect="auto", cmap="viridis", vmin=0, vmax=1)
    right.set_xticks(range(hi - lo + 1), [str(w) for w in widths[lo:hi + 1]])
    right.set_yticks(range(len(names)), [""] * len(names))
    right.set_xlabel("bits of a group")
    fig.colorbar(image, ax=right, label="share of groups")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
