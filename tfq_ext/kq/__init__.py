"""Kernel quantization, KQ (Yu et al. 2020, arXiv 2003.05148): low-bit indices into per-layer kernel codebooks."""

from tfq_ext.kq.api import (
    DEFAULT_BITS_PER_WEIGHT,
    KQReport,
    choose_codewords,
    conv_bits,
    export_tflite,
    quantize_kernels,
    to_dense_model,
)
from tfq_ext.kq.layers import (
    CODEBOOK_BITS_RANGE,
    KQ_LAYERS,
    SCALE_BITS,
    KQConv2D,
    KQDepthwiseConv2D,
    check_codebook_bits,
    kq_bits,
)

__all__ = [
    "CODEBOOK_BITS_RANGE",
    "DEFAULT_BITS_PER_WEIGHT",
    "KQ_LAYERS",
    "SCALE_BITS",
    "KQConv2D",
    "KQDepthwiseConv2D",
    "KQReport",
    "check_codebook_bits",
    "choose_codewords",
    "conv_bits",
    "export_tflite",
    "kq_bits",
    "quantize_kernels",
    "to_dense_model",
]
