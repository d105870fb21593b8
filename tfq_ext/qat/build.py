"""Building a Keras model from a rewritten layer graph (``tfq_ext.qat.graph``): layers and weights.

Shared by :func:`~tfq_ext.qat.quantize_model` (quantized layers) and
:func:`~tfq_ext.qat.float_lowering.lower_for_xnnpack` (the same rewrites in float, for post-training files).
"""

from __future__ import annotations

import inspect

from typing import Callable, Dict, Optional

import tensorflow_model_optimization as tfmot

from tfq_ext._keras import keras, tf
from tfq_ext.qat.folding import FoldedBatchNorm
from tfq_ext.qat.graph import Graph, Node, iter_refs, map_refs
from tfq_ext.qat.normalization import QuantLayerNormalization
from tfq_ext.qat.rewrite import bn_arrays
from tfq_ext.qat.xnnpack import BorderCorrection, NearestUpsampling2D, ScalarAffine

__all__ = ["deserialize_layer", "rebuild", "load_weights", "named_weights"]

# This package's own layers that the rewrites create, by class name.
_OWN_LAYERS = {cls.__name__: cls for cls in (BorderCorrection, NearestUpsampling2D)}
QuantizeWrapperV2 = tfmot.quantization.keras.QuantizeWrapperV2


def deserialize_layer(node: Node) -> keras.layers.Layer:
    custom = node.extra.get("custom_class")
    if custom is not None:
        return custom.from_config(node.config)
    if node.source is not None and type(node.source).__name__ == node.class_name:
        # The layer's own class: works for custom layers that Keras' registry does not know.
        return type(node.source).from_config(node.config)
    if node.class_name == "FoldedBatchNorm":
        return FoldedBatchNorm.from_config(dict(node.config, name=f"quant_{node.name}",
                                                output_quantizer=node.extra["output_quantizer"]))
    if node.class_name == "QuantLayerNormalization":
        return QuantLayerNormalization.from_config(dict(node.config, quantizer=node.extra["output_quantizer"]))
    if node.class_name == "ScalarOp":
        return ScalarAffine(node.config["scale"], node.config["offset"], node.config["clip"], name=node.name)
    if node.class_name in _OWN_LAYERS:
        return _OWN_LAYERS[node.class_name].from_config(node.config)
    return keras.layers.deserialize({"class_name": node.class_name, "config": node.config})


def rebuild(graph: Graph, layers: Dict[str, keras.layers.Layer],
            input_layer: Optional[Callable[[str], keras.layers.Layer]] = None) -> keras.Model:
    """The functional model of ``graph`` with ``layers`` by node name; ``input_layer(name)``, if given, makes
    the layer applied to each float model input (the input quantizer)."""
    outputs_by_call: Dict[tuple, object] = {}
    inputs: Dict[str, object] = {}
    for node in graph.nodes.values():
        if node.class_name != "InputLayer":
            continue
        cfg = node.config
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        tensor = keras.Input(batch_shape=tuple(shape), dtype=cfg.get("dtype", "float32"), name=node.name,
                             sparse=cfg.get("sparse", False), ragged=cfg.get("ragged", False))
        inputs[node.name] = tensor
        quantized = tensor
        if tensor.dtype.is_floating and input_layer is not None:
            quantized = input_layer(node.name)(tensor)
        outputs_by_call[(node.name, 0)] = quantized

    def tensor_of(ref):
        out = outputs_by_call[(ref[0], ref[1])]
        return tf.nest.flatten(out)[ref[2]]

    work = [(node, index, call) for node in graph.nodes.values() if node.class_name != "InputLayer"
            for index, call in enumerate(node.calls)]
    while work:
        remaining = []
        for node, index, call in work:
            refs = iter_refs(call)
            if any((ref[0], ref[1]) not in outputs_by_call for ref in refs):
                remaining.append((node, index, call))  # a shared layer whose later call needs later layers
                continue
            kwargs = dict(refs[-1][3]) if refs and len(refs[-1]) > 3 and refs[-1][3] else {}
            if "mask" in kwargs and kwargs["mask"] is None and not _takes_mask(layers[node.name]):
                # A rewrite replaced a layer whose call took `mask` (Keras 3 records mask=None for every
                # BatchNormalization call) by one whose call does not; no mask means the same as mask=None.
                del kwargs["mask"]
            args = map_refs(call, tensor_of)
            if isinstance(args, list) and len(args) == 1:
                args = args[0]
            outputs_by_call[(node.name, index)] = layers[node.name](args, **kwargs)
        if len(remaining) == len(work):
            raise RuntimeError("internal error: the rewritten graph has a cycle or a dangling reference")
        work = remaining
    outputs = [tensor_of(ref) for ref in graph.outputs]
    ordered_inputs = [inputs[ref[0]] for ref in graph.inputs]
    return keras.Model(ordered_inputs if len(ordered_inputs) > 1 else ordered_inputs[0],
                       outputs if len(outputs) > 1 else outputs[0])


def _short_name(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def named_weights(layer: keras.layers.Layer) -> Dict[str, object]:
    """``{short variable name: value}`` of a layer (``kernel``, ``bias``, ``gamma``, ...)."""
    return {_short_name(v): v.numpy() for v in layer.weights}


def load_weights(node: Node, layer: keras.layers.Layer) -> None:
    """Copies the original values into the new (possibly wrapped) layer, matching variables by short name."""
    if node.class_name == "FoldedBatchNorm":
        target = layer.layer if isinstance(layer, QuantizeWrapperV2) else layer
        kernel_weights = node.extra["kernel_weights"]
        if kernel_weights is not None:
            target.kernel.assign(kernel_weights[0])
            if target.conv_bias is not None:
                target.conv_bias.assign(kernel_weights[1])
        if node.extra["bn_weights"] is not None:
            scale, center = node.extra["bn_flags"]
            values = bn_arrays(node.extra["bn_weights"], scale, center, int(target.gamma.shape[0]))
            for variable, value in zip((target.gamma, target.beta, target.moving_mean, target.moving_variance),
                                       values):
                variable.assign(value)
        return
    values = node.extra.get("weights")
    if values is None:
        values = named_weights(node.source) if node.source is not None else {}
    remaining = dict(values)
    for variable in layer.weights:
        key = _short_name(variable)
        if key in remaining:
            variable.assign(remaining.pop(key))
    if remaining:
        raise RuntimeError(f"internal error: weights {sorted(remaining)} of layer '{node.name}' were not copied "
                           f"into its quantized version")


def _takes_mask(layer) -> bool:
    """Whether calling ``layer`` (or the layer a quantize wrapper calls) accepts a ``mask`` argument."""
    inner = getattr(layer, "layer", layer)
    try:
        parameters = inspect.signature(inner.call).parameters
    except (TypeError, ValueError):
        return True
    return "mask" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
