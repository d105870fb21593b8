"""Quant-Noise (arXiv 2004.07320) and iterative product quantization (arXiv 1907.05686)."""

from tfq_ext.quant_noise.ipq import DEFAULT_BLOCK_SIZES, PQStage, add_quant_noise, quantize_pq, to_dense_model
from tfq_ext.quant_noise.layers import (NOISE_FORMS, QuantNoiseCentroidRefresh, QuantNoiseConv2D, QuantNoiseDense,
                                        QuantNoiseEmbedding, QuantNoiseSchedule)
from tfq_ext.quant_noise.pq_layers import PQ_LAYERS, PQConv2D, PQDense, PQEmbedding

__all__ = ["DEFAULT_BLOCK_SIZES", "NOISE_FORMS", "PQ_LAYERS", "PQConv2D", "PQDense", "PQEmbedding", "PQStage",
           "QuantNoiseCentroidRefresh", "QuantNoiseConv2D", "QuantNoiseDense", "QuantNoiseEmbedding",
           "QuantNoiseSchedule", "add_quant_noise", "quantize_pq", "to_dense_model"]
