"""Range tracking for activations: batch min/max, exponential moving averages and percentiles.

Math only (functions on tensors and variables); the Keras objects that own the variables live in
``tfq_ext.quantizers``.

References: Jacob et al. 2018, arXiv 1712.05877 (EMA of batch min/max); Tailor et al. 2021, arXiv 2008.05000
(percentile ranges).
"""

from __future__ import annotations

from tfq_ext._keras import tf

__all__ = ["batch_min_max", "ema_assign", "percentile_min_max"]


def batch_min_max(x: tf.Tensor, nonnegative: bool = False):
    """(min, max) of a batch, widened to contain 0 so the zero point stays an exact integer code.

    ``nonnegative=True``: the caller knows ``x >= 0`` (a ReLU output), so the widened minimum is 0 without
    reducing over ``x``; it is returned as the Python float 0.0, which :func:`ema_assign` folds away.
    """
    high = tf.maximum(tf.reduce_max(x), 0.0)
    if nonnegative:
        return 0.0, high
    return tf.minimum(tf.reduce_min(x), 0.0), high


def ema_assign(variable: tf.Variable, value, decay: float, initialized: tf.Tensor) -> tf.Tensor:
    """EMA update ``v <- decay * v + (1 - decay) * value``; the first update takes ``value`` itself.

    Starting from the first batch instead of an arbitrary prior (tfmot starts at [-6, 6]) means a decay of
    0.999 does not need thousands of steps to forget the prior. Returns the variable's new value as a read of
    the variable, so no gradient flows back into ``value`` (ranges are statistics, not trained). A Python
    ``value`` of 0 (a ReLU output's minimum) gives ``decay * v``, the same number, with fewer ops in the graph.
    """
    if isinstance(value, (int, float)) and value == 0:
        new = tf.where(initialized, decay * variable, tf.zeros([], variable.dtype))
    else:
        value = tf.cast(value, variable.dtype)
        new = tf.where(initialized, decay * variable + (1.0 - decay) * value, value)
    return variable.assign(new)


def percentile_min_max(x: tf.Tensor, percentile: float):
    """(low, high) percentiles of ``x`` (e.g. 0.1 -> 0.1th and 99.9th); 0 included.

    Only the tails are needed, so two ``top_k`` of size ``round((n - 1) * percentile / 100) + 1`` replace a full
    sort (the k-th largest is the same element a sort would index); for 0.1% of a million values that is
    about 1000 elements per side instead of sorting a million.
    """
    if not 0.0 <= percentile < 50.0:
        raise ValueError(f"`percentile` must be in [0, 50). Received: percentile={percentile}")
    flat = tf.reshape(x, [-1])
    last = tf.cast(tf.size(flat) - 1, tf.float32)
    k = tf.cast(tf.round(last * percentile / 100.0), tf.int32) + 1
    high = tf.math.top_k(flat, k, sorted=True).values[k - 1]
    low = -tf.math.top_k(-flat, k, sorted=True).values[k - 1]
    return tf.minimum(low, 0.0), tf.maximum(high, 0.0)
