"""``quantize_model``: integer-only quantization-aware training for a tf_keras model (Jacob et al.).

The model's graph is flattened (nested models inlined), rewritten to match TFLite's integer kernels (BN folded
into the preceding kernel layer, ReLU fused, SeparableConv2D split), and rebuilt with tfmot's
``QuantizeWrapperV2`` around every layer that TFLite quantizes, configured by this package's QuantizeConfigs.

References: Jacob et al. 2018, arXiv 1712.05877.
"""

from __future__ import annotations

from typing import Dict, Optional

import tensorflow_model_optimization as tfmot

from tfq_ext._keras import ensure_tf_keras_model, keras
from tfq_ext.qat.configs import (KERNEL_LAYOUTS, OUTPUT_LAYERS, PASSTHROUGH_LAYERS, SELF_QUANTIZED_LAYERS,
                                 KernelQuantizeConfig, NoOpQuantizeConfig, OutputQuantizeConfig)
from tfq_ext.qat.folding import check_freeze_bn_delay
from tfq_ext.qat.build import deserialize_layer, load_weights, rebuild
from tfq_ext.qat.graph import Graph, Node, check_graph_model, flatten_model
from tfq_ext.qat.layers import QuantizeInput
from tfq_ext.qat.lowering import (drop_identities, exact_range, expand_activations, fold_layer_scale,
                                  fold_scalar_ops, layer_normalization, lower_for_delegate,
                                  per_channel_affine_as_depthwise)
from tfq_ext.qat.rewrite import fold_batch_norms, fuse_relu, relu_kind, split_activation, split_separable
from tfq_ext.quantizers import ActivationQuantizer, FixedRangeQuantizer, IdentityQuantizer, WeightQuantizer

__all__ = ["quantize_model", "UnsupportedLayerError", "SUPPORTED_LAYERS", "FrozenQuantizeWrapper"]

QuantizeWrapperV2 = tfmot.quantization.keras.QuantizeWrapperV2
_QuantizeConfig = tfmot.quantization.keras.QuantizeConfig

SUPPORTED_LAYERS = sorted(set(KERNEL_LAYOUTS) | OUTPUT_LAYERS | PASSTHROUGH_LAYERS | SELF_QUANTIZED_LAYERS
                          | {"SeparableConv2D"})
# Activations with an int8 TFLite form; sigmoid/softmax/tanh need the fixed output ranges TFLite uses, swish
# becomes LOGISTIC + MUL and tf_keras' hard_sigmoid an affine with a clip (tfq_ext.qat.lowering).
_ACTIVATIONS = {"linear", "relu", "relu6", "sigmoid", "tanh", "softmax", "swish", "silu", "hard_sigmoid", "gelu",
                "leaky_relu"}
_FIXED_RANGES = {"sigmoid": (0.0, 1.0), "softmax": (0.0, 1.0), "tanh": (-1.0, 1.0)}
# The converter rejects per-channel fake quantization where it reshapes or transposes the kernel into TFLite's
# layout ("op has mismatched quantized axes", measured with TF 2.21): these kernels are quantized per tensor.
_PER_TENSOR_ONLY = frozenset({"Dense", "Conv1D", "Conv2DTranspose"})
# Layers whose output TFLite can leave unquantized when a ReLU follows (the ReLU fuses into them).
_RELU_FUSING = {"Add"}

keras.utils.get_custom_objects().update({
    "QuantizeWrapperV2": QuantizeWrapperV2,
    "QuantizeWrapper": tfmot.quantization.keras.QuantizeWrapper,
})


@keras.utils.register_keras_serializable(package="tfq_ext")
class FrozenQuantizeWrapper(QuantizeWrapperV2):
    """tfmot's ``QuantizeWrapperV2`` for a layer whose weights are constants (a rewrite's 1/6 or a Rescaling's
    scale as a depthwise kernel): tfmot lists a quantized weight as trainable even when the wrapped layer is
    frozen; here nothing is trainable while ``trainable`` is False."""

    @property
    def trainable_weights(self):
        return super().trainable_weights if self.trainable else []

    @property
    def non_trainable_weights(self):
        if self.trainable:
            return super().non_trainable_weights
        return self._dedup_weights(super().trainable_weights + super().non_trainable_weights)


class UnsupportedLayerError(ValueError):
    """A layer that ``quantize_model`` cannot quantize on its own; the message says how to annotate it."""


def quantize_model(model, *, per_channel: bool = True, weight_bits: int = 8, activation_bits: int = 8,
                   fold_batch_norm: bool = True, freeze_bn_delay: Optional[int] = None, quant_delay: int = 0,
                   ema_decay: float = 0.99, quantize_configs: Optional[Dict[str, _QuantizeConfig]] = None
                   ) -> keras.Model:
    """Returns a QAT copy of ``model`` whose fake quantization matches TFLite's integer-only inference.

    The user's model is not modified; weights are copied. Train the result with ``fit`` and export it with
    ``tflite_export.convert``.

    Args:
        model: a built tf_keras Sequential or functional model (nested models are supported; a Keras 3
            Sequential model of built-in layers is converted).
        per_channel: per-output-channel weight scales for Conv/DepthwiseConv (TFLite's default scheme);
            False gives per-tensor scales everywhere (for accelerators that need it). Dense,
            Conv1D and Conv2DTranspose kernels are always per tensor: TFLite's converter rejects per-channel
            fake quantization of their reshaped or transposed weights.
        weight_bits, activation_bits: bits of weights and activations (8 for TFLite int8).
        fold_batch_norm: fold BatchNormalization into the preceding kernel layer (Jacob et al.); False keeps BN
            as its own (quantized) layer.
        freeze_bn_delay: training steps after which folded BNs switch to moving statistics (None: never).
        quant_delay: training steps before activations are quantized (ranges are tracked meanwhile).
        ema_decay: decay of the activation range moving averages.
        quantize_configs: ``{layer name or class name: tfmot QuantizeConfig}`` for layers this function does not
            know (layers annotated with ``tfmot.quantization.keras.quantize_annotate_layer`` work too).

    Returns:
        A new, uncompiled ``keras.Model``.

    Raises:
        UnsupportedLayerError: for layers without a known quantization, listing each with its class and the
            ways to annotate it.
    """
    if isinstance(model, keras.Model):
        check_graph_model(model, "model")
    model = ensure_tf_keras_model(model, "model")
    _check_options(weight_bits, activation_bits, quantize_configs, freeze_bn_delay)
    quantize_configs = dict(quantize_configs or {})

    def act_quantizer():
        return ActivationQuantizer(activation_bits, ema_decay=ema_decay, quant_delay=quant_delay)

    def weight_quantizer(class_name: str) -> WeightQuantizer:
        _, axis, depthwise = KERNEL_LAYOUTS[class_name]
        channel_ok = class_name not in _PER_TENSOR_ONLY
        return WeightQuantizer(weight_bits, per_channel=per_channel and channel_ok, axis=axis, depthwise=depthwise)

    graph = flatten_model(model)
    _apply_annotations(graph, quantize_configs)
    _check_supported(graph)
    split_separable(graph)
    split_activation(graph)
    drop_identities(graph)
    expand_activations(graph)
    fold_scalar_ops(graph)
    if fold_batch_norm:
        fold_batch_norms(graph, lambda c: keras.utils.serialize_keras_object(weight_quantizer(c)), freeze_bn_delay)
    fold_layer_scale(graph)
    per_channel_affine_as_depthwise(graph)  # after folding: only BNs with nothing to fold into are left
    layer_normalization(graph)
    fuse_relu(graph)
    # What XNNPACK would leave outside its partition, rewritten into ops it delegates (tfq_ext.qat.lowering).
    lower_for_delegate(graph)

    layers: Dict[str, keras.layers.Layer] = {}
    for node in graph.nodes.values():
        if node.class_name == "InputLayer":
            continue
        layers[node.name] = _make_layer(node, graph, act_quantizer, weight_quantizer, activation_bits)
    qat_model = rebuild(graph, layers, lambda name: QuantizeInput(act_quantizer(), name=f"quantize_{name}"))
    for node in graph.nodes.values():
        if node.name in layers:
            load_weights(node, layers[node.name])
    return qat_model


def _check_options(weight_bits, activation_bits, quantize_configs, freeze_bn_delay):
    for name, value in (("weight_bits", weight_bits), ("activation_bits", activation_bits)):
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 16:
            raise ValueError(f"`{name}` must be an int in [2, 16]. Received: {name}={value!r}")
    if quantize_configs is not None and not isinstance(quantize_configs, dict):
        raise TypeError(f"`quantize_configs` must be a dict {{layer or class name: QuantizeConfig}}. "
                        f"Received: quantize_configs={quantize_configs!r}")
    for key, config in (quantize_configs or {}).items():
        if not isinstance(config, _QuantizeConfig):
            raise TypeError(f"`quantize_configs[{key!r}]` must be a tfmot QuantizeConfig. Received: {config!r}")
    check_freeze_bn_delay(freeze_bn_delay)


def _apply_annotations(graph: Graph, quantize_configs) -> None:
    """Unwraps tfmot ``QuantizeAnnotate`` layers and attaches user QuantizeConfigs to their nodes."""
    for node in graph.nodes.values():
        if node.class_name == "QuantizeAnnotate":
            wrapper = node.source
            inner = wrapper.layer
            node.class_name = type(inner).__name__
            node.config = dict(inner.get_config(), name=node.name)
            node.source = inner
            node.extra["custom_class"] = type(inner)
            if wrapper.quantize_config is not None:
                node.extra["quantize_config"] = wrapper.quantize_config
        for key in (node.name, node.source.name if node.source is not None else None, node.class_name):
            if key in quantize_configs:
                node.extra["quantize_config"] = quantize_configs[key]
                break


def _check_supported(graph: Graph) -> None:
    problems = []
    for node in graph.nodes.values():
        if node.class_name == "InputLayer" or "quantize_config" in node.extra:
            continue
        if node.class_name not in SUPPORTED_LAYERS:
            problems.append(f"  - layer '{node.name}' (class {node.class_name}): no known integer quantization")
            continue
        for key in ("activation",):
            act = node.config.get(key)
            if act is not None and (not isinstance(act, str) or act not in _ACTIVATIONS):
                problems.append(f"  - layer '{node.name}' (class {node.class_name}): activation {act!r} has no "
                                f"int8 TFLite kernel (supported: {sorted(_ACTIVATIONS)})")
    if problems:
        raise UnsupportedLayerError(
            "quantize_model cannot quantize these layers:\n" + "\n".join(problems) + "\n"
            "Annotate each with a tfmot QuantizeConfig, either with "
            "`tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=MyConfig())` when building "
            "the model, or with `quantize_model(model, quantize_configs={'layer_name': MyConfig()})`. "
            f"Supported layer classes: {', '.join(SUPPORTED_LAYERS)}.")


def _output_quantizer(node: Node, graph: Graph, act_quantizer, activation_bits: int):
    """The output quantizer of a node: a fixed range where a rewrite implements a clip by saturation; None
    (not quantized here) when only concatenations read the output.

    The converter gives such a tensor the concatenation's scale, so TFLite requantizes the producer's
    accumulators straight onto the concatenation's grid (measured: a producer with its own range differed by
    up to 31 steps where its values passed that range); the concatenation's quantizer alone simulates that.
    """
    output_range = node.extra.get("output_range")
    if output_range is None and node.class_name == "ScalarOp":
        clip = node.config["clip"]
        if clip is not None and clip[0] is not None and clip[1] is not None and clip[1] != 6.0:
            output_range = exact_range(*clip, num_bits=activation_bits)
    if output_range is not None:
        return FixedRangeQuantizer(*output_range, num_bits=activation_bits)
    if _read_only_by_concat(graph, node.name):
        return None
    return act_quantizer()


def _read_only_by_concat(graph: Graph, name: str) -> bool:
    if graph.is_output(name) or len(graph.nodes[name].calls) != 1:
        return False
    readers = [graph.nodes[c] for c in graph.consumers(name)]
    return bool(readers) and all(r.class_name == "Concatenate" and "quantize_config" not in r.extra
                                 and len(r.calls) == 1 for r in readers)


def _make_layer(node: Node, graph: Graph, act_quantizer, weight_quantizer, activation_bits) -> keras.layers.Layer:
    if node.class_name == "FoldedBatchNorm":
        quantizer = _output_quantizer(node, graph, act_quantizer, activation_bits)
        node.extra["output_quantizer"] = quantizer if quantizer is not None else IdentityQuantizer()
    elif node.class_name == "QuantLayerNormalization":
        node.extra["output_quantizer"] = act_quantizer()
    layer = deserialize_layer(node)
    if node.extra.get("non_trainable"):
        layer.trainable = False
    user_config = node.extra.get("quantize_config")
    if user_config is not None:
        return QuantizeWrapperV2(layer, user_config, name=f"quant_{node.name}")
    if node.class_name in ("FoldedBatchNorm", "QuantLayerNormalization"):
        return layer  # quantizes its kernel / intermediates and its output itself
    if node.class_name in KERNEL_LAYOUTS:
        attr = KERNEL_LAYOUTS[node.class_name][0]
        wrapper = FrozenQuantizeWrapper if node.extra.get("non_trainable") else QuantizeWrapperV2
        return wrapper(layer, KernelQuantizeConfig(attr, weight_quantizer(node.class_name),
                                                             _output_quantizer(node, graph, act_quantizer,
                                                                               activation_bits)),
                                 name=f"quant_{node.name}")
    if node.class_name in OUTPUT_LAYERS:
        activation = node.config.get("activation") if node.class_name == "Activation" else None
        if node.class_name == "Softmax":
            activation = "softmax"
        if activation in _FIXED_RANGES:
            low, high = _FIXED_RANGES[activation]
            config = OutputQuantizeConfig(FixedRangeQuantizer(low, high, activation_bits))
        elif node.class_name in _RELU_FUSING and _feeds_only_relu(graph, node.name):
            config = NoOpQuantizeConfig()
        else:
            quantizer = _output_quantizer(node, graph, act_quantizer, activation_bits)
            config = OutputQuantizeConfig(quantizer) if quantizer is not None else NoOpQuantizeConfig()
        return QuantizeWrapperV2(layer, config, name=f"quant_{node.name}")
    return layer  # passthrough: TFLite keeps the input's scale


def _feeds_only_relu(graph: Graph, name: str) -> bool:
    if graph.is_output(name) or len(graph.nodes[name].calls) != 1:
        return False
    consumers = [graph.nodes[c] for c in graph.consumers(name)]
    return len(consumers) == 1 and relu_kind(consumers[0]) is not None


