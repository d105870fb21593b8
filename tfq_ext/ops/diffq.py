"""DiffQ math: learned bits per group of weights, pseudo-quantization noise, true quantization, model size.

One bits parameter per group of ``group_size`` consecutive weights (the tensor flattened in row-major order):
b = min_bits + (max_bits - min_bits) * sigmoid(logit). The quantization step of a group is
Delta = (max(w) - min(w)) / (2^b - 1), with min/max over the whole tensor (one range per tensor, as the paper).

- Training forward: w + Delta * xi, xi ~ N(0, 1) / 2 ("gaussian", the reference default) or U(-1/2, 1/2)
  ("uniform", the paper's form). Backward: exact gradient of that expression in w and in b (no STE).
- Inference forward: true quantization with b rounded: codes = round((w - o) / Delta) in [0, 2^b - 1],
  w_q = o + codes * Delta, where the grid origin o is min ("range", the reference's grid, default) or the
  multiple of Delta nearest to min ("zero": 0 is then a level, at the same storage; the extreme levels may fall
  up to Delta / 2 inside [min, max]). Backward: not used (the deployed weights).
- Size: sum over groups of group_size * b bits, plus 64 bits of range and 8 bits of header per tensor, plus the
  per-group bits field (see :func:`bits_field_width`); differentiable in b, everything else constant.

References: Defossez, Adi, Synnaeve 2021, "Differentiable Model Compression via Pseudo Quantization Noise",
arXiv 2104.09987.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from tfq_ext._keras import tf
from tfq_ext.ops.fake_quant import fake_quant_affine, qrange
from tfq_ext.ops.size import packed_bytes

__all__ = [
    "BITS_LIMITS",
    "NOISE_FORMS",
    "GRIDS",
    "RANGE_BYTES",
    "HEADER_BYTES",
    "check_bits_config",
    "logit_for_bits",
    "bits_from_logits",
    "round_bits",
    "tensor_range",
    "quant_step",
    "grid_origin",
    "pseudo_quant_noise",
    "quantize",
    "dequantize",
    "quantize_dequantize",
    "bits_field_width",
    "size_bits",
    "packed_tensor_bytes",
    "uniform_fake_quant",
]

BITS_LIMITS = (1, 15)  # codes of up to 15 bits fit int16/uint16, as the reference's packer
NOISE_FORMS = ("gaussian", "uniform")
GRIDS = ("range", "zero")
RANGE_BYTES = 8  # float32 min and max of the tensor
HEADER_BYTES = 1  # smallest rounded bits (4 bits) and width of the bits field (4 bits)


def check_bits_config(min_bits, max_bits, init_bits) -> None:
    """Raises ValueError unless 1 <= min_bits < init_bits < max_bits <= 15 (all real numbers).

    init_bits must lie strictly inside the range: its logit is finite only there.
    """
    for name, value in (("min_bits", min_bits), ("max_bits", max_bits), ("init_bits", init_bits)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"`{name}` must be a number. Received: {name}={value!r}")
        if not BITS_LIMITS[0] <= float(value) <= BITS_LIMITS[1]:
            raise ValueError(f"`{name}` must be in [{BITS_LIMITS[0]}, {BITS_LIMITS[1]}] (codes are stored in at "
                             f"most 15 bits). Received: {name}={value}")
    if not float(min_bits) < float(max_bits):
        raise ValueError(f"`min_bits` must be smaller than `max_bits`. Received: min_bits={min_bits}, "
                         f"max_bits={max_bits}")
    if not float(min_bits) < float(init_bits) < float(max_bits):
        raise ValueError(f"`init_bits` must lie strictly between min_bits={min_bits} and max_bits={max_bits} "
                         f"(the bits logit is finite only there). Received: init_bits={init_bits}")


def logit_for_bits(bits: float, min_bits: float, max_bits: float) -> float:
    """The logit whose :func:`bits_from_logits` is ``bits`` (inverse sigmoid of the position in the range)."""
    t = (float(bits) - float(min_bits)) / (float(max_bits) - float(min_bits))
    return float(math.log(t / (1.0 - t)))


def bits_from_logits(logits: tf.Tensor, min_bits: float, max_bits: float) -> tf.Tensor:
    """b = min_bits + (max_bits - min_bits) * sigmoid(logits); stays inside [min_bits, max_bits] by design."""
    t = tf.sigmoid(tf.convert_to_tensor(logits, tf.float32))
    return float(min_bits) + (float(max_bits) - float(min_bits)) * t


def round_bits(bits: tf.Tensor) -> tf.Tensor:
    """Bits used by true quantization: rounded to the nearest integer, clipped to [1, 15]."""
    return tf.clip_by_value(tf.round(bits), float(BITS_LIMITS[0]), float(BITS_LIMITS[1]))


def tensor_range(w: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(min, max) over all elements: DiffQ uses one range per tensor, shared by every group."""
    return tf.reduce_min(w), tf.reduce_max(w)


def quant_step(w_min, w_max, bits: tf.Tensor) -> tf.Tensor:
    """Delta = (max - min) / (2^b - 1) per group; differentiable in b and in the range."""
    return (w_max - w_min) / (tf.pow(2.0, bits) - 1.0)


def _groups(w: tf.Tensor, group_size: int) -> tf.Tensor:
    return tf.reshape(w, (-1, int(group_size)))


def pseudo_quant_noise(w: tf.Tensor, bits: tf.Tensor, group_size: int, noise: str = "gaussian",
                       seed=None) -> tf.Tensor:
    """Training-time stand-in for quantization: w + Delta(b) * xi, same shape as ``w``.

    Args:
        w: weight tensor whose size is a multiple of ``group_size``.
        bits: (size / group_size,) real-valued bits (from :func:`bits_from_logits`).
        group_size: consecutive weights (row-major) sharing one bits value.
        noise: "gaussian" (xi ~ N(0, 1) / 2, reference default) or "uniform" (xi ~ U(-1/2, 1/2), the paper).

    Forward: w + (max(w) - min(w)) / (2^b - 1) * xi.
    Backward: exact derivative of the forward expression in w (identity plus the range term) and in b.
    """
    if noise not in NOISE_FORMS:
        raise ValueError(f"`noise` must be one of {NOISE_FORMS}. Received: noise={noise!r}")
    flat = _groups(w, group_size)
    w_min, w_max = tensor_range(w)
    step = quant_step(w_min, w_max, bits)[:, None]
    if noise == "gaussian":
        xi = tf.random.normal(tf.shape(flat), seed=seed) / 2.0
    else:
        xi = tf.random.uniform(tf.shape(flat), -0.5, 0.5, seed=seed)
    return tf.reshape(flat + step * xi, tf.shape(w))


def grid_origin(w_min, step, grid: str = "range") -> tf.Tensor:
    """Lowest level of each group's grid: ``w_min`` ("range") or the multiple of ``step`` nearest to it ("zero")."""
    if grid not in GRIDS:
        raise ValueError(f"`grid` must be one of {GRIDS}. Received: grid={grid!r}")
    w_min = tf.cast(w_min, tf.float32)
    if grid == "range":
        return w_min + tf.zeros_like(step)
    # A group of a constant tensor has step 0; its only level is the constant itself.
    safe = tf.where(step > 0, step, tf.ones_like(step))
    return tf.where(step > 0, step * tf.round(w_min / safe), w_min + tf.zeros_like(step))


def quantize(w: tf.Tensor, bits: tf.Tensor, group_size: int, grid: str = "range"):
    """True quantization: integer codes per group, the tensor's range, and the integer bits.

    Args:
        w: weights; bits: (n_groups,) real bits, rounded here with :func:`round_bits`.
        grid: "range" (levels start at min, as the reference) or "zero" (0 is a level).

    Returns:
        (codes, w_min, w_max, bits): codes int32 of shape (n_groups, group_size) in [0, 2^bits - 1].
    """
    bits = round_bits(tf.convert_to_tensor(bits, tf.float32))
    flat = _groups(w, group_size)
    w_min, w_max = tensor_range(w)
    step = quant_step(w_min, w_max, bits)[:, None]
    origin = grid_origin(w_min, step, grid)
    # A constant tensor has range 0: every code is 0 and dequantizes to min exactly.
    safe = tf.where(step > 0, step, tf.ones_like(step))
    levels = tf.pow(2.0, bits)[:, None] - 1.0
    codes = tf.clip_by_value(tf.round((flat - origin) / safe), 0.0, levels)
    return tf.cast(codes, tf.int32), w_min, w_max, tf.cast(bits, tf.int32)


def dequantize(codes, w_min, w_max, bits, shape, grid: str = "range") -> tf.Tensor:
    """w_q = origin + codes * Delta(bits), reshaped to ``shape``; the one formula of eval and of unpacking."""
    bits = tf.cast(bits, tf.float32)
    step = quant_step(tf.cast(w_min, tf.float32), tf.cast(w_max, tf.float32), bits)[:, None]
    return tf.reshape(grid_origin(w_min, step, grid) + tf.cast(codes, tf.float32) * step, shape)


def quantize_dequantize(w: tf.Tensor, bits: tf.Tensor, group_size: int, grid: str = "range") -> tf.Tensor:
    """Inference weights: dequantize(quantize(w)) with rounded bits. Forward only (no useful gradient)."""
    codes, w_min, w_max, int_bits = quantize(w, bits, group_size, grid)
    return dequantize(codes, w_min, w_max, int_bits, tf.shape(w), grid)


def quantize_dequantize_ste(w: tf.Tensor, bits: tf.Tensor, group_size: int, grid: str = "range") -> tf.Tensor:
    """Training on the true grid: forward = :func:`quantize_dequantize`, backward = identity in ``w``
    (straight-through; no code saturates, the grid spans the tensor's range). ``bits`` gets no gradient."""
    return w + tf.stop_gradient(quantize_dequantize(w, tf.stop_gradient(bits), group_size, grid) - w)


def bits_field_width(int_bits) -> int:
    """Bits per group of the stored bits field: ceil(log2(max - min + 1)) over the tensor's rounded bits.

    The field stores b - min(b), so a tensor whose groups all share one width costs 0 bits per group.
    """
    int_bits = np.asarray(int_bits)
    spread = int(int_bits.max()) - int(int_bits.min()) if int_bits.size else 0
    return int(math.ceil(math.log2(spread + 1)))


def _field_width_tf(bits: tf.Tensor) -> tf.Tensor:
    """:func:`bits_field_width` of the rounded ``bits`` as a float tensor (no gradient).

    Counted by thresholds rather than with a float log2, which can land just above an integer and round up.
    """
    rounded = round_bits(tf.stop_gradient(bits))
    spread = tf.reduce_max(rounded) - tf.reduce_min(rounded)
    return tf.add_n([tf.cast(spread >= 2.0 ** k, tf.float32) for k in range(4)])


def size_bits(bits: tf.Tensor, group_size: int) -> tf.Tensor:
    """Differentiable storage of one tensor in bits: group_size * sum(b) + per-group bits field + range + header.

    The bits field's width comes from the current rounded bits and carries no gradient. The estimate differs
    from :func:`packed_tensor_bytes` only by the rounding of b and by byte padding (at most 2 bytes).
    """
    bits = tf.convert_to_tensor(bits, tf.float32)
    n_groups = tf.cast(tf.size(bits), tf.float32)
    return (float(group_size) * tf.reduce_sum(bits) + _field_width_tf(bits) * n_groups
            + 8.0 * (RANGE_BYTES + HEADER_BYTES))


def packed_tensor_bytes(int_bits, group_size: int) -> int:
    """Exact bytes of one packed DiffQ tensor: range + header + bits field + codes (each byte-aligned)."""
    int_bits = np.asarray(int_bits, dtype=np.int64)
    field = packed_bytes(int_bits.size, bits_field_width(int_bits))
    codes = (int(group_size) * int(int_bits.sum()) + 7) // 8
    return RANGE_BYTES + HEADER_BYTES + field + codes


def uniform_fake_quant(w: tf.Tensor, num_bits: int) -> tf.Tensor:
    """Uniform quantization-aware training baseline: the tensor's [min, max] on 2^num_bits levels.

    The range is nudged so that 0 is a level (``fake_quant_affine``'s affine grid, unsigned codes).
    Forward: S * (clip(round(w / S) + Z, 0, 2^n - 1) - Z). Backward: straight-through (clipped) in w; the range
    carries no gradient.
    """
    qmin, qmax = qrange(num_bits, signed=False)
    w_min, w_max = tensor_range(tf.stop_gradient(w))
    w_min, w_max = tf.minimum(w_min, 0.0), tf.maximum(w_max, 0.0)
    scale = (w_max - w_min) / float(qmax - qmin)
    scale = tf.where(scale > 0, scale, tf.ones_like(scale))
    zero_point = tf.clip_by_value(tf.round(qmin - w_min / scale), float(qmin), float(qmax))
    return fake_quant_affine(w, scale, zero_point, qmin, qmax)
