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
    "fake_quant_folded_kernel",
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


def fake_quant_folded_kernel(kernel: tf.Tensor, gamma: tf.Tensor, inv_sigma: tf.Tensor, num_bits: int = 8,
                             per_channel: bool = True, return_quantized: bool = False):
    """Fake-quantizes a BN-folded kernel and scales it back by the folding factor; its gradient written out.

    With ``f = gamma * inv_sigma`` (one factor per output channel), the folded kernel ``u = kernel * f`` is
    fake-quantized symmetrically in narrow range with its own range ``max |u|`` (per column, or over the whole
    tensor), exactly as :class:`~tfq_ext.quantizers.WeightQuantizer` does, and divided by ``f`` again, which is
    the kernel whose convolution batch-normalises to the corrected BN-folding output (Jacob et al.).

    Forward: ``Q(u) / safe(f)``, with ``safe(f) = f`` where ``|f| > 1e-12`` and 1e-12 elsewhere; also the batch
    norm scale ``gamma`` (``1e-12 / inv_sigma`` where ``|f| <= 1e-12``) and, if asked, ``Q(u)`` itself.
    Backward: what automatic differentiation of that forward gives (the clipped STE of the fake-quant op, the
    gradient of its range ``max |u|`` back to the elements that reach it, the product and quotient rules), in a
    few fused expressions instead of one gradient function per elementary op; ``inv_sigma`` gets none (moving
    variance). As the range is ``max |u|``, the STE and the range gradient together pass the upstream gradient
    through unchanged, which is what this computes (no kernel-sized fake-quant gradient op). This keeps the training graph, and the time to trace and optimise it, close to conv + BN.

    Args:
        kernel: the unfolded kernel with its output channels on the last axis (a depthwise kernel reshaped
            so that its merged channels are).
        gamma, inv_sigma: ``[channels]``: BN scale and ``1 / sqrt(moving_variance + eps)``.
        num_bits: weight bits.
        per_channel: one range per output channel (else one for the tensor).
        return_quantized: also return ``Q(u)`` (for a branch that convolves with the folded kernel).

    Returns:
        ``(Q(u) / safe(f), bn_scale)``, or ``(Q(u), Q(u) / safe(f), bn_scale)`` with ``return_quantized``.
    """
    qrange(num_bits, True)
    num_bits = int(num_bits)

    others = list(range(kernel.shape.rank - 1))  # every axis but the channels
    range_axes = others if per_channel else None

    @tf.custom_gradient
    def folded(kernel, gamma, inv_sigma):
        factor = gamma * inv_sigma
        u = kernel * factor
        magnitude = tf.abs(u)
        bound = tf.maximum(tf.reduce_max(magnitude, axis=range_axes), 1e-8)
        low = -bound
        if per_channel:
            quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                u, low, bound, num_bits=num_bits, narrow_range=True)
        else:
            quantized = tf.quantization.fake_quant_with_min_max_vars(u, low, bound, num_bits=num_bits,
                                                                     narrow_range=True)
        regular = tf.abs(factor) > 1e-12
        inv_safe = 1.0 / tf.where(regular, factor, 1e-12)  # per channel: kernel-sized products, not quotients
        unfolded = quantized * inv_safe
        inv_safe_sigma = inv_safe * inv_sigma  # d(1 / safe(f)) / d gamma = -inv_safe**2 * inv_sigma
        scale = tf.where(regular, gamma, 1e-12 / inv_sigma)

        def grad(*upstream):
            if return_quantized:
                d_quantized, d_unfolded, d_scale = upstream
                dq = d_unfolded * inv_safe + d_quantized
            else:
                d_unfolded, d_scale = upstream
                dq = d_unfolded * inv_safe
            # The range is max |u| itself, so no element lies outside it: the clipped STE passes dq everywhere and
            # the range's own gradient (dmax - dmin, the clipped gradients) is zero. Where float rounding of the
            # nudged range clips the maximum element, automatic differentiation hands that element its gradient
            # back through the range (d bound to the arg max); du = dq is that result without the kernel-sized
            # FakeQuant gradient, comparison, sign and reduction ops (the elements tied at the maximum keep their
            # own gradients instead of sharing their sum).
            du = dq
            # gamma reaches the output through u = kernel * f, through 1 / safe(f) and through the scale; the
            # last two only where f is regular.
            d_inverse = tf.reduce_sum(d_unfolded * unfolded, axis=others) * inv_safe_sigma
            d_gamma = (tf.reduce_sum(du * kernel, axis=others) * inv_sigma
                       + tf.where(regular, d_scale - d_inverse, 0.0))
            return du * factor, d_gamma, None

        if return_quantized:
            return (quantized, unfolded, scale), grad
        return (unfolded, scale), grad

    return folded(kernel, gamma, inv_sigma)


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
