"""Stateless TensorFlow math shared by every method: fake quantization, range tracking."""

from tfq_ext.ops.fake_quant import (
    fake_quant,
    fake_quant_affine,
    fake_quant_per_channel,
    nudged_scale_zero_point,
    qrange,
    round_ste,
    symmetric_range,
)
from tfq_ext.ops.ranges import batch_min_max, ema_assign, percentile_min_max

__all__ = [
    "batch_min_max",
    "ema_assign",
    "fake_quant",
    "fake_quant_affine",
    "fake_quant_per_channel",
    "nudged_scale_zero_point",
    "percentile_min_max",
    "qrange",
    "round_ste",
    "symmetric_range",
]
