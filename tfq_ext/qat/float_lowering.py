"""The XNNPACK rewrites of ``tfq_ext.qat.lowering`` on a float model, for post-training int8 files.

Post-training quantization calibrates the float graph as it is, so a float model with a hard-swish, a
``same`` average pool or a ReLU after a shared Add converts to ops XNNPACK leaves outside its partition (the
converter even fuses ``x * relu6(x + 3) / 6`` into HARD_SWISH). :func:`lower_for_xnnpack` applies the same
rewrites as quantization-aware training, each exact in float, and returns a float model with identical outputs
whose int8 file stays in one partition. ``tflite_export.convert`` calls it for float models.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tfq_ext._compat import is_graph_model
from tfq_ext._keras import keras
from tfq_ext.qat.build import deserialize_layer, load_weights, named_weights, rebuild
from tfq_ext.qat.configs import KERNEL_LAYOUTS, OUTPUT_LAYERS, PASSTHROUGH_LAYERS
from tfq_ext.qat.graph import Graph, flatten_model
from tfq_ext.qat.lowering import (clip_as_relu6, drop_identities, expand_activations, fold_layer_scale,
                                  fold_scalar_ops, lower_for_delegate, per_channel_affine_as_depthwise)
from tfq_ext.qat.rewrite import bn_arrays, fuse_relu, split_activation, split_separable

__all__ = ["lower_for_xnnpack", "fold_batch_norms"]

# What the float rewrites know; a model with anything else is returned as it is.
_KNOWN = set(KERNEL_LAYOUTS) | OUTPUT_LAYERS | PASSTHROUGH_LAYERS | {
    "InputLayer", "SeparableConv2D", "LayerNormalization"}
# Classes whose presence makes a rewrite worth it (the others convert to delegated ops as they are).
_REWRITTEN = {"ScalarOp", "ReLU", "Activation", "Conv2D", "Dense", "DepthwiseConv2D", "AveragePooling2D", "MaxPooling2D", "Concatenate", "UpSampling2D",
              "PReLU", "LayerScale", "Rescaling", "Normalization"}


def _fold_batch_norms_float(graph: Graph) -> None:
    """Conv2D / DepthwiseConv2D / Dense + BatchNormalization (inference) -> the kernel layer with the BN folded
    into its kernel and bias, as the converter folds it; the ReLU after the BN can then fuse into the layer."""
    for name in list(graph.nodes):
        node = graph.nodes.get(name)
        if node is None or node.class_name not in ("Conv2D", "DepthwiseConv2D", "Dense") or node.source is None:
            continue
        if node.config.get("activation", "linear") != "linear" or len(node.calls) != 1:
            continue
        readers = graph.consumers(name)
        if graph.is_output(name) or len(readers) != 1:
            continue
        bn = graph.nodes[readers[0]]
        axis = bn.config.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if bn.class_name != "BatchNormalization" or bn.source is None or axis not in (-1, 3) or len(bn.calls) != 1:
            continue
        attr = KERNEL_LAYOUTS[node.class_name][0]
        weights = node.extra.get("weights") or named_weights(node.source)
        kernel = weights[attr]
        gamma, beta, mean, var = bn_arrays(bn.source.get_weights(), bn.config.get("scale", True),
                                           bn.config.get("center", True), int(np.prod(kernel.shape[-2:]))
                                           if node.class_name == "DepthwiseConv2D" else kernel.shape[-1])
        factor = gamma / np.sqrt(var + bn.config.get("epsilon", 1e-3))
        bias = weights.get("bias", np.zeros_like(factor))
        node.extra["weights"] = {attr: (kernel * factor.reshape(kernel.shape[-2:] if node.class_name ==
                                                                "DepthwiseConv2D" else (-1,))).astype("float32"),
                                 "bias": (beta + (bias - mean) * factor).astype("float32")}
        node.config["use_bias"] = True
        graph.replace_refs(bn.name, name)
        graph.remove(bn.name)


def lower_for_xnnpack(model) -> Optional[keras.Model]:
    """A float copy of ``model`` with the XNNPACK rewrites applied, or None when nothing is rewritten.

    Returns None (use ``model`` as it is) for subclassed models, models with layers the rewrites do not know
    (custom layers, recurrent layers, TFOpLambda functions other than arithmetic and activations) and models
    without a layer to rewrite. The copy's outputs equal the model's up to float rounding.
    """
    if not isinstance(model, keras.Model) or not is_graph_model(model):
        return None
    graph = flatten_model(model)
    classes = {node.class_name for node in graph.nodes.values()}
    if not classes <= _KNOWN | {"ScalarOp"} or not classes & _REWRITTEN:
        return None
    split_separable(graph)  # TFLite runs it as these two ops anyway; its BN can then fold into the pointwise conv
    split_activation(graph)
    drop_identities(graph)
    expand_activations(graph)
    fold_scalar_ops(graph)
    clip_as_relu6(graph)
    _fold_batch_norms_float(graph)
    fold_layer_scale(graph)
    per_channel_affine_as_depthwise(graph)
    fuse_relu(graph)
    lower_for_delegate(graph)
    for node in graph.nodes.values():
        if node.class_name == "BorderCorrection":
            node.config["quantize_map"] = False
    return _rebuild(graph)


def _rebuild(graph: Graph) -> keras.Model:
    layers = {node.name: deserialize_layer(node) for node in graph.nodes.values() if node.class_name != "InputLayer"}
    rebuilt = rebuild(graph, layers)
    for node in graph.nodes.values():
        if node.name in layers:
            load_weights(node, layers[node.name])
    return rebuilt


def fold_batch_norms(model) -> keras.Model:
    """A copy of ``model`` with every BatchNormalization that follows a Conv2D / DepthwiseConv2D / Dense (linear
    activation, no other reader) folded into that layer's kernel and bias, with its inference statistics.

    The outputs equal the model's up to float rounding. Methods that share kernels between output channels
    (KQ) cluster the folded kernels, so that the converter's own folding cannot make shared kernels differ.
    """
    graph = flatten_model(model)
    _fold_batch_norms_float(graph)
    return _rebuild(graph)
