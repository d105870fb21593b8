"""Affine fake quantization (Jacob et al., arXiv 1712.05877) with clipped straight-through gradients.

Real value r and integer q are related by r = S * (q - Z). The range [min, max] is first nudged so that real 0
is exactly representable (Z is an integer in [qmin, qmax]); this is what makes zero padding exact in integer
inference and what TFLite's converter expects from ``FakeQuantWithMinMaxVars``.

Forward: x -> S * (clip(round(x / S) + Z, qmin, qmax) - Z).
Backward: clipped straight-through estimator, dL/dx = dL/dy inside the nudged [min, max], 0 outside.

References: Jacob et al. 2018, arXiv 1712.05877; Bengio et al. 2013 (STE), arXiv 1308.3432.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from tfq_ext._keras import tf

__all__ = [
    "qrange",
    "nudged_scale_zero_point",
    "fake_quant",
    "fake_quant_per_channel",
    "fake_quant_affine",
    "symmetric_range",
    "round_ste",
]


def qrange(num_bits: int, narrow_range: bool = False, signed: bool = True) -> Tuple[int, int]:
    """Integer range for ``num_bits``; narrow range drops the most negative code (int8: [-127, 127])."""
    if not 2 <= int(num_bits) <= 16:
        raise ValueError(f"`num_bits` must be an integer in [2, 16]. Received: num_bits={num_bits}")
    levels = 2 ** int(num_bits)
    lo, hi = (-(levels // 2), levels // 2 - 1) if signed else (0, levels - 1)
    return (lo + 1 if narrow_range else lo), hi


def nudged_scale_zero_point(min_val, max_val, num_bits: int = 8, narrow_range: bool = False):
    """Scale S and integer zero point Z (signed codes) for a range, with 0 exactly representable.

    The range is first widened to contain 0, as activations after ReLU have min 0 and weights are symmetric.
    Works on numpy arrays or tensors (element-wise, so per-channel ranges are vectors).

    Returns:
        (scale, zero_point) with zero_point an integer-valued float in [qmin, qmax].
    """
    qmin, qmax = qrange(num_bits, narrow_range)
    lib = tf if tf.is_tensor(min_val) or tf.is_tensor(max_val) else np
    min_val = lib.minimum(min_val, 0.0)
    max_val = lib.maximum(max_val, 0.0)
    scale = (max_val - min_val) / float(qmax - qmin)
    # A range of width 0 (all-zero tensor) would give S = 0; any positive scale represents it exactly.
    scale = lib.where(scale > 0, scale, lib.ones_like(scale))
    zero_point = lib.clip(lib.round(qmin - min_val / scale), qmin, qmax) if lib is np else tf.clip_by_value(
        tf.round(qmin - min_val / scale), float(qmin), float(qmax))
    return scale, zero_point


def symmetric_range(x: tf.Tensor, axis=None) -> tf.Tensor:
    """max |x| over all elements (axis=None) or over every axis except ``axis`` (per channel)."""
    if axis is None:
        return tf.reduce_max(tf.abs(x))
    axis = axis % x.shape.rank
    reduce_axes = [a for a in range(x.shape.rank) if a != axis]
    return tf.reduce_max(tf.abs(x), axis=reduce_axes)


def fake_quant(x: tf.Tensor, min_val, max_val, num_bits: int = 8, narrow_range: bool = False) -> tf.Tensor:
    """Per-tensor fake quantization through TF's ``FakeQuantWithMinMaxVars``.

    Using that op (rather than equivalent arithmetic) is deliberate: the TFLite converter reads its min/max to
    set the integer tensor's scale and zero point, so training and the exported file use one quantizer.
    The op nudges the range as :func:`nudged_scale_zero_point` does and has the clipped STE gradient.
    """
    qrange(num_bits, narrow_range)  # validates num_bits
    return tf.quantization.fake_quant_with_min_max_vars(
        x, tf.cast(min_val, x.dtype), tf.cast(max_val, x.dtype), num_bits=int(num_bits), narrow_range=narrow_range
    )


def fake_quant_per_channel(x: tf.Tensor, min_val, max_val, axis: int = -1, num_bits: int = 8,
                           narrow_range: bool = True) -> tf.Tensor:
    """Per-channel fake quantization along ``axis`` (``FakeQuantWithMinMaxVarsPerChannel``).

    TF's op quantizes along the last axis only; other axes are moved there and back with a transpose, which the
    converter folds away for constant weights.
    """
    qrange(num_bits, narrow_range)
    rank = x.shape.rank
    axis = axis % rank
    min_val = tf.cast(min_val, x.dtype)
    max_val = tf.cast(max_val, x.dtype)
    if axis == rank - 1:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, min_val, max_val, num_bits=int(num_bits), narrow_range=narrow_range)
    perm = [a for a in range(rank) if a != axis] + [axis]
    inverse = np.argsort(perm).tolist()
    moved = tf.transpose(x, perm)
    quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        moved, min_val, max_val, num_bits=int(num_bits), narrow_range=narrow_range)
    return tf.transpose(quantized, inverse)


@tf.custom_gradient
def round_ste(x: tf.Tensor):
    """round(x) forward, identity backward (plain straight-through estimator)."""
    return tf.round(x), lambda dy: dy


def fake_quant_affine(x: tf.Tensor, scale, zero_point, qmin: int, qmax: int) -> tf.Tensor:
    """Fake quantization with an explicit scale and zero point, any integer range (e.g. 1-bit sign codes).

    Forward: S * (clip(round(x / S) + Z, qmin, qmax) - Z); backward: clipped STE (0 where the code saturates).
    Used where TF's op cannot express the grid (ranges that are not [min, max] nudged, or fewer than 2 bits).
    """
    scale = tf.cast(scale, x.dtype)
    zero_point = tf.cast(zero_point, x.dtype)
    codes = round_ste(x / scale) + zero_point
    inside = tf.logical_and(codes >= qmin, codes <= qmax)
    clipped = tf.clip_by_value(codes, float(qmin), float(qmax))
    # Saturated elements carry no gradient (clipped STE); stop_gradient keeps their value.
    codes = tf.where(inside, codes, tf.stop_gradient(clipped))
    return scale * (codes - zero_point)
