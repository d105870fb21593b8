"""Degree-Quant: quantization-aware training for graph neural networks on tensorflow-gnn (INT8 and INT4).

Needs the optional ``gnn`` extra (``pip install 'tfq_ext[gnn]'``); ``import tfq_ext`` never imports this package.

References: Tailor, Fernandez-Marques, Lane, "Degree-Quant", ICLR 2021, arXiv 2008.05000.
"""

from tfq_ext._keras import tf  # noqa: F401  (chooses tf_keras before tensorflow_gnn imports TensorFlow)

try:
    import tensorflow_gnn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tfq_ext.degree_quant needs tensorflow-gnn: install the package's `gnn` extra "
        "(pip install 'tfq_ext[gnn]', which pins tensorflow-gnn==1.0.3).") from exc

from tfq_ext.degree_quant.export import GraphInterpreter, convert_graph_model, float_ops, plain_tensor_model
from tfq_ext.degree_quant.layers import DegreeQuantGCN, DegreeQuantGIN, in_degree
from tfq_ext.degree_quant.quantizer import MaskedRangeQuantizer, QuantDense

__all__ = ["DegreeQuantGCN", "DegreeQuantGIN", "GraphInterpreter", "MaskedRangeQuantizer", "QuantDense",
           "convert_graph_model", "float_ops", "in_degree", "plain_tensor_model"]
