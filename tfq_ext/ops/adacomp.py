"""AdaComp gradient compression math: bins, the per-bin selection rule, sign x scale quantization, accounting.

Everything here is a pure function of tensors (any float dtype), so the rule can be checked on hand-computed
golden values in float64. The stateful part (per-replica residuals, the exchange through tf.distribute's
collectives) lives in ``tfq_ext.distribute``.

One step for one layer and one learner, on the flattened gradient ``dW`` and residual ``G``::

    G <- G + dW                     (accumulate)
    H  = G + dW                     ("scaled" residual: recent gradients count twice)
    g_max[b] = max_{i in bin b} |G_i|   (bins of L_T consecutive elements)
    send i  iff  |H_i| >= g_max[bin(i)]  and  G_i != 0
    sent_i = sign(G_i) * scale,  scale = mean_{sent} |G_i|   (one scale per layer)
    G_i <- G_i - sent_i            (the residual keeps everything that was not sent)

Elements whose accumulated residual is exactly zero are never sent: they carry no gradient mass, and without
this guard an all-zero bin (a dead unit) would send all of its ``L_T`` zeros because ``0 >= 0``.

References:
    Chen, Choi, Brand, Agrawal, Zhang, Gopalakrishnan, "AdaComp: Adaptive Residual Gradient Compression for
    Data-Parallel Distributed Training", AAAI 2018, arXiv 1712.02679.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from tfq_ext._keras import tf

__all__ = [
    "LAYER_KINDS",
    "CompressionStep",
    "adacomp_mask",
    "compress_step",
    "decode_sparse_sum",
    "dense_bits",
    "encode_sparse",
    "encoded_bits",
    "layer_kind",
    "quantize_sent",
    "topk_mask",
    "validate_bin_size",
]

#: Layer kinds that get their own bin length ``L_T``: conv kernels (rank >= 3), fully-connected / recurrent /
#: embedding matrices (rank 2), and everything else (biases, normalization parameters).
LAYER_KINDS = ("conv", "fc", "other")


class CompressionStep(NamedTuple):
    """Result of one compression step on a flattened layer gradient.

    Attributes:
        sent: dense tensor of the quantized values that are sent (zero where nothing is sent).
        residual: the new residual ``G - sent``.
        mask: boolean tensor, True where an element is sent.
        scale: scalar, the per-layer magnitude of every sent value (0 when nothing is sent).
        count: int32 scalar, the number of sent elements.
    """

    sent: tf.Tensor
    residual: tf.Tensor
    mask: tf.Tensor
    scale: tf.Tensor
    count: tf.Tensor


def validate_bin_size(bin_size, name: str = "bin_size") -> int:
    """Returns ``bin_size`` as an int, or raises if it is not a positive integer (the bin length ``L_T``)."""
    if isinstance(bin_size, bool) or not isinstance(bin_size, (int, np.integer)):
        raise TypeError(f"`{name}` (the AdaComp bin length L_T) must be a positive integer. "
                        f"Received: {name}={bin_size!r} (type {type(bin_size).__name__})")
    if bin_size < 1:
        raise ValueError(f"`{name}` (the AdaComp bin length L_T) must be >= 1. Received: {name}={bin_size!r}")
    return int(bin_size)


def layer_kind(shape) -> str:
    """Classifies a weight by its rank: ``"conv"`` (rank >= 3), ``"fc"`` (rank 2) or ``"other"``."""
    rank = len(tf.TensorShape(shape))
    if rank >= 3:
        return "conv"
    return "fc" if rank == 2 else "other"


def adacomp_mask(accumulated: tf.Tensor, grad: tf.Tensor, bin_size: int) -> tf.Tensor:
    """The AdaComp selection rule on flat tensors: ``|G + dW| >= max_bin |G|`` and ``G != 0``.

    Args:
        accumulated: 1-D residual after accumulation, ``G = G_old + dW``.
        grad: 1-D gradient ``dW`` of the same length.
        bin_size: ``L_T``, the length of the bins of consecutive elements (the last bin may be shorter).

    Returns:
        Boolean 1-D mask, True for the elements to send. Ties with the bin maximum are sent.

    References:
        arXiv 1712.02679 (Algorithm 1).
    """
    bin_size = validate_bin_size(bin_size)
    n = tf.size(accumulated)
    n_bins = (n + bin_size - 1) // bin_size
    # Zero padding never changes a bin's max |G| (|.| >= 0), so the short last bin is handled for free.
    padded = tf.pad(tf.abs(accumulated), [[0, n_bins * bin_size - n]])
    g_max = tf.reduce_max(tf.reshape(padded, [n_bins, bin_size]), axis=1)
    g_max = tf.repeat(g_max, bin_size)[:n]
    scaled = tf.abs(accumulated + grad)
    return tf.logical_and(scaled >= g_max, tf.not_equal(accumulated, 0))


def topk_mask(accumulated: tf.Tensor, k: int) -> tf.Tensor:
    """Fixed-rate baseline: the ``k`` largest ``|G|`` of the layer (ties broken by position), as a mask."""
    n = tf.size(accumulated)
    k = tf.minimum(tf.cast(k, tf.int32), n)
    _, idx = tf.math.top_k(tf.abs(accumulated), k=k, sorted=False)
    hit = tf.scatter_nd(idx[:, None], tf.ones_like(idx), tf.reshape(n, [1]))
    return tf.logical_and(hit > 0, tf.not_equal(accumulated, 0))


def quantize_sent(accumulated: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Quantizes the sent values to ``sign(G_i) * scale`` with one scale per layer (mean ``|G_i|`` sent).

    Returns:
        ``(sent, scale)``: the dense tensor of sent values (0 elsewhere) and the scalar scale.
    """
    magnitude = tf.where(mask, tf.abs(accumulated), tf.zeros_like(accumulated))
    count = tf.reduce_sum(tf.cast(mask, accumulated.dtype))
    # divide_no_nan: a layer that sends nothing has scale 0 instead of NaN.
    scale = tf.math.divide_no_nan(tf.reduce_sum(magnitude), count)
    sent = tf.where(mask, tf.sign(accumulated) * scale, tf.zeros_like(accumulated))
    return sent, scale


def compress_step(residual: tf.Tensor, grad: tf.Tensor, bin_size: int | None = None, *,
                  k: int | None = None) -> CompressionStep:
    """One AdaComp (or fixed top-k) step for one layer and one learner on flat tensors.

    Forward rule: ``G = residual + dW``; send ``sign(G_i) * scale`` where ``|G_i + dW_i| >= max_bin |G|``;
    the new residual is ``G - sent`` (so ``sent + new_residual == G`` up to one rounding).

    Args:
        residual: 1-D residual before this step (zeros for the no-residual ablation).
        grad: 1-D gradient of the same length and dtype.
        bin_size: ``L_T`` for AdaComp selection; exactly one of ``bin_size`` and ``k`` must be given.
        k: number of elements for the fixed top-k baseline.

    Returns:
        A :class:`CompressionStep`.

    References:
        arXiv 1712.02679.
    """
    if (bin_size is None) == (k is None):
        raise ValueError("Exactly one of `bin_size` (AdaComp) and `k` (top-k) must be given. "
                         f"Received: bin_size={bin_size!r}, k={k!r}")
    accumulated = residual + grad
    mask = adacomp_mask(accumulated, grad, bin_size) if k is None else topk_mask(accumulated, k)
    sent, scale = quantize_sent(accumulated, mask)
    count = tf.reduce_sum(tf.cast(mask, tf.int32))
    return CompressionStep(sent, accumulated - sent, mask, scale, count)


def encode_sparse(accumulated: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Packs the sent elements into one int32 per element: ``sign(G_i) * (i + 1)`` (the scale travels apart).

    The sign shares the word with the index because the quantized value has only one bit of information.
    """
    idx = tf.cast(tf.where(mask)[:, 0], tf.int32)
    sign = tf.cast(tf.sign(tf.gather(accumulated, idx)), tf.int32)
    return sign * (idx + 1)


def decode_sparse_sum(packed: tf.Tensor, scales: tf.Tensor, n: int, dtype=tf.float32) -> tf.Tensor:
    """Sums packed sparse updates into a dense 1-D tensor of length ``n``.

    Args:
        packed: int32 entries ``sign * (index + 1)`` from any number of learners, concatenated.
        scales: per-entry scale (the sending learner's layer scale), same length as ``packed``.
        n: length of the dense result.
        dtype: dtype of the result.
    """
    idx = tf.abs(packed) - 1
    values = tf.cast(tf.sign(packed), dtype) * tf.cast(scales, dtype)
    return tf.math.unsorted_segment_sum(values, idx, n)


def dense_bits(n: int) -> int:
    """Bits of an uncompressed float32 gradient of ``n`` elements."""
    return 32 * int(n)


def encoded_bits(count, n: int):
    """Bits of the compressed layer, index bits counted: per sent element an absolute index of
    ``ceil(log2 n)`` bits plus one sign bit, plus one float32 scale per layer.

    Works on Python ints and on tensors (``count`` may be a tensor). This is the paper-style accounting; the
    bytes that really cross the wire in ``tfq_ext.distribute`` (one int32 per element) are reported apart.
    """
    index_bits = max(1, math.ceil(math.log2(max(int(n), 2))))
    return count * (index_bits + 1) + 32
