"""Integer-arithmetic-only quantization-aware training (Jacob et al., arXiv 1712.05877) on tfmot's machinery."""

from tfq_ext.qat.configs import KernelQuantizeConfig, NoOpQuantizeConfig, OutputQuantizeConfig
from tfq_ext.qat.folding import FoldedBatchNorm
from tfq_ext.qat.layers import QuantizeInput
from tfq_ext.qat.quantize import SUPPORTED_LAYERS, UnsupportedLayerError, quantize_model

__all__ = [
    "FoldedBatchNorm",
    "KernelQuantizeConfig",
    "NoOpQuantizeConfig",
    "OutputQuantizeConfig",
    "QuantizeInput",
    "SUPPORTED_LAYERS",
    "UnsupportedLayerError",
    "quantize_model",
]
