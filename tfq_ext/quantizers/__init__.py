"""Serializable quantizer objects shared by the methods (tfmot ``Quantizer``-compatible)."""

from tfq_ext.quantizers.affine import ActivationQuantizer, FixedRangeQuantizer, WeightQuantizer, deserialize_quantizer

__all__ = ["ActivationQuantizer", "FixedRangeQuantizer", "WeightQuantizer", "deserialize_quantizer"]
