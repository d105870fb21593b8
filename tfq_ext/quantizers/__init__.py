"""Serializable quantizer objects shared by the methods (tfmot ``Quantizer``-compatible)."""

from tfq_ext.quantizers.affine import (ActivationQuantizer, FixedRangeQuantizer, IdentityQuantizer, WeightQuantizer,
                                      deserialize_quantizer)

__all__ = ["ActivationQuantizer", "FixedRangeQuantizer", "IdentityQuantizer", "WeightQuantizer",
           "deserialize_quantizer"]
