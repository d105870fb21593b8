"""Graph rewrites that keep an integer-only file inside one XNNPACK partition.

Each rewrite replaces a layer (or pattern) that TFLite would run as an op XNNPACK does not delegate in int8
with layers whose TFLite ops it does delegate, computing the same function (measured with ai-edge-litert 2.3.0:
XNNPACK leaves int8 RELU on its own, HARD_SWISH, PRELU, AVERAGE_POOL_2D, MAX_POOL_2D 1x1 with stride > 1,
RESIZE_NEAREST_NEIGHBOR and CONCATENATION of more than 5 inputs to TFLite's builtin kernels, and delegates
DEPTHWISE_CONV_2D, MUL, ADD, LOGISTIC, MEAN, CONCATENATION of up to 5 inputs, DEPTH_TO_SPACE and RESHAPE).
The QAT model then simulates exactly what those int8 ops compute, so Keras and TFLite agree.

- ``fold_scalar_ops``: chains of ``x * a + b`` constants (TFOpLambda ops), with the ReLU/ReLU6 between them,
  become one affine with a clip range; MobileNetV3's hard sigmoid ``ReLU6(x + 3) / 6`` is one depthwise 1x1
  convolution whose output range is exactly [0, 1] (the int8 saturation is the clip).
- ``expand_activations``: swish -> sigmoid (LOGISTIC) and Multiply (MUL); tf_keras' hard sigmoid
  ``clip(0.2 x + 0.5, 0, 1)`` -> affine with clip.
- ``per_channel_affine_as_depthwise``: Rescaling, Normalization, standalone BatchNormalization, the affine
  ops above and ``valid`` AveragePooling2D -> DepthwiseConv2D (chains merged into one).
- ``standalone_relu_as_depthwise``: a ReLU/ReLU6 that cannot be fused into its producer -> an identity
  depthwise 1x1 convolution with the activation fused (a strided 1x1 MaxPooling2D likewise, without it).
- ``same_average_pool``: ``same`` AveragePooling2D -> depthwise sum / (k*k) and a multiplication by the
  constant ``k*k / count`` map of the border positions (:class:`~tfq_ext.qat.xnnpack.BorderCorrection`).
- ``split_wide_concat``: CONCATENATION of more than 5 inputs -> nested ones.
- ``nearest_upsampling``: UpSampling2D(nearest) -> :class:`~tfq_ext.qat.xnnpack.NearestUpsampling2D`
  (CONCATENATION + RESHAPE).
- ``drop_identities``, ``fold_layer_scale``, ``layer_normalization``: ConvNeXt's ``Activation("linear")``
  (no op, so no second quantizer), LayerScale (folded into the Dense before it, else a depthwise 1x1) and
  LayerNormalization (:class:`~tfq_ext.qat.normalization.QuantLayerNormalization`; its RSQRT stays outside
  XNNPACK, which has no int8 kernel for it).
- ``prelu_as_depthwise``: PReLU with per-channel slopes a <= 1 -> ``a*x + relu((1-a)*x)``, two depthwise 1x1
  convolutions and an ADD.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from tfq_ext.qat.graph import Graph, Node, iter_refs
from tfq_ext.qat.rewrite import _fresh_name, _insert_node, bn_arrays, relu_kind

__all__ = ["fold_scalar_ops", "expand_activations", "per_channel_affine_as_depthwise",
           "standalone_relu_as_depthwise", "same_average_pool", "split_wide_concat", "nearest_upsampling",
           "prelu_as_depthwise", "split_scalar_ops", "clip_as_relu6", "drop_identities", "fold_layer_scale", "layer_normalization",
           "MAX_CONCAT_INPUTS", "exact_range"]

# XNNPACK delegates int8 CONCATENATION of at most this many inputs (measured: 5 yes, 6 no).
MAX_CONCAT_INPUTS = 5


# ---------------------------------------------------------------------------------------------- graph helpers
def _consumers(graph: Graph, name: str) -> List[Node]:
    return [graph.nodes[c] for c in graph.consumers(name)]


def _sole_reader(graph: Graph, name: str) -> Optional[Node]:
    """The one node that reads ``name``'s single call, once, as its only input; None otherwise."""
    node = graph.nodes[name]
    if graph.is_output(name) or len(node.calls) != 1:
        return None
    readers = _consumers(graph, name)
    if len(readers) != 1 or len(readers[0].calls) != 1:
        return None
    refs = iter_refs(readers[0].calls[0])
    if len(refs) != 1 or refs[0][0] != name:
        return None
    return readers[0]


def _input_ref(node: Node) -> list:
    refs = iter_refs(node.calls[0])
    return list(refs[0][:3])


def _node_input_shape(graph: Graph, node: Node) -> Optional[tuple]:
    if not node.calls:
        return None
    return graph.ref_shape(_input_ref(node))


def _same_shape(graph: Graph, new: str, like: str) -> None:
    if like in graph.shapes:
        graph.shapes[new] = graph.shapes[like]


def _insert_before(graph: Graph, anchor: str, new: Node) -> None:
    _insert_node(graph, anchor, new, after=False)


_fresh = _fresh_name


def exact_range(low: float, high: float, num_bits: int = 8) -> tuple:
    """``(low, high')`` for :class:`~tfq_ext.quantizers.FixedRangeQuantizer` so that its grid is exactly
    [low, high]: that quantizer drops one step at the top (TFLite's LOGISTIC convention)."""
    levels = 2 ** num_bits
    return float(low), float((levels * high - low) / (levels - 1))


def _depthwise(name: str, kernel: np.ndarray, bias: Optional[np.ndarray], calls, kernel_size=(1, 1),
               strides=(1, 1), padding="valid", activation="linear", trainable=False) -> Node:
    """A DepthwiseConv2D node with fixed initial weights ``kernel`` (kh, kw, channels)."""
    channels = kernel.shape[-1]
    config = {"name": name, "kernel_size": tuple(kernel_size), "strides": tuple(strides), "padding": padding,
              "depth_multiplier": 1, "activation": activation, "use_bias": bias is not None}
    node = Node(name, "DepthwiseConv2D", config, calls)
    node.extra["weights"] = {"depthwise_kernel": kernel.reshape(tuple(kernel_size) + (channels, 1)).astype("float32")}
    if bias is not None:
        node.extra["weights"]["bias"] = np.asarray(bias, "float32")
    node.extra["non_trainable"] = not trainable
    return node


def _replace_with_depthwise(node: Node, scale: np.ndarray, offset: Optional[np.ndarray], trainable=False,
                            kernel_size=(1, 1), strides=(1, 1), padding="valid", activation="linear") -> None:
    """Turns ``node`` (in place, keeping its name and calls) into a per-channel depthwise convolution."""
    new = _depthwise(node.name, np.asarray(scale, "float32"), offset, node.calls, kernel_size, strides, padding,
                     activation, trainable)
    node.class_name, node.config, node.source = new.class_name, new.config, None
    node.extra = dict(new.extra, **{k: v for k, v in node.extra.items() if k == "output_range"})


# ------------------------------------------------------------------------------------------- scalar affines
def _scalar_op(name: str, scale: float, offset: float, clip=None, calls=None) -> Node:
    return Node(name, "ScalarOp", {"name": name, "scale": float(scale), "offset": float(offset), "clip": clip},
                calls or [])


def fold_scalar_ops(graph: Graph) -> None:
    """Merges ``ScalarOp`` chains and the ReLU/ReLU6 between them into one affine with a clip range.

    ``clip(a2 * clip(a1 x + b1, l, h) + b2)`` is again an affine with a clip when ``a2 > 0``:
    ``clip(a2 a1 x + a2 b1 + b2, a2 l + b2, a2 h + b2)``. A ReLU(6) after an unclipped ScalarOp is its clip.
    """
    changed = True
    while changed:
        changed = False
        for name in list(graph.nodes):
            node = graph.nodes.get(name)
            if node is None or node.class_name != "ScalarOp" or "quantize_config" in node.extra:
                continue
            reader = _sole_reader(graph, name)
            if reader is None or "quantize_config" in reader.extra:
                continue
            cfg = node.config
            clip = list(cfg["clip"]) if cfg["clip"] is not None else [None, None]
            kind = relu_kind(reader)
            if kind is not None:
                high = 6.0 if kind == "relu6" else None
                low = 0.0 if clip[0] is None else max(clip[0], 0.0)
                if clip[1] is not None:
                    high = clip[1] if high is None else min(high, clip[1])
                cfg["clip"] = [low, high]
            elif reader.class_name == "ScalarOp" and reader.config["clip"] is None and (
                    cfg["clip"] is None or reader.config["scale"] > 0):
                a2, b2 = reader.config["scale"], reader.config["offset"]
                cfg["scale"], cfg["offset"] = a2 * cfg["scale"], a2 * cfg["offset"] + b2
                if cfg["clip"] is not None:
                    cfg["clip"] = [None if c is None else a2 * c + b2 for c in cfg["clip"]]
            else:
                continue
            graph.replace_refs(reader.name, name)
            graph.remove(reader.name)
            changed = True


def expand_activations(graph: Graph) -> None:
    """swish/silu -> sigmoid + Multiply; tf_keras ``hard_sigmoid`` -> ScalarOp ``clip(0.2x + 0.5, 0, 1)``."""
    for name in list(graph.nodes):
        node = graph.nodes[name]
        if node.class_name != "Activation" or "quantize_config" in node.extra or len(node.calls) != 1:
            continue
        activation = node.config.get("activation")
        if activation in ("swish", "silu"):
            sigmoid = Node(_fresh(graph, f"{name}_sigmoid"), "Activation",
                           {"name": None, "activation": "sigmoid"}, [[_input_ref(node) + [{}]]])
            sigmoid.config["name"] = sigmoid.name
            _insert_before(graph, name, sigmoid)
            _same_shape(graph, sigmoid.name, name)
            node.class_name, node.config, node.source = "Multiply", {"name": name}, None
            node.calls = [[_input_ref(node) + [{}], [sigmoid.name, 0, 0, {}]]]
        elif activation == "hard_sigmoid":
            node.class_name, node.source = "ScalarOp", None
            node.config = {"name": name, "scale": 0.2, "offset": 0.5, "clip": [0.0, 1.0]}


# ------------------------------------------------------------------------------------ per-channel affines
def _normalization_affine(node: Node, channels: int):
    cfg = node.config
    axis = cfg.get("axis", -1)
    axis = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
    if axis not in ((-1,), (3,)):
        return None
    if cfg.get("mean") is not None and cfg.get("variance") is not None:
        mean, var = np.asarray(cfg["mean"], "float32"), np.asarray(cfg["variance"], "float32")
    else:
        named = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in node.source.weights}
        mean, var = named["mean"], named["variance"]
    mean = np.broadcast_to(mean.reshape(-1), (channels,)).astype("float32")
    std = np.sqrt(np.maximum(np.broadcast_to(var.reshape(-1), (channels,)), 1e-7)).astype("float32")
    if cfg.get("invert", False):
        return std, mean
    return 1.0 / std, -mean / std


def _scalar_activation(clip):
    """(fused activation, output range) that implement a ScalarOp's clip on a depthwise convolution."""
    if clip is None or (clip[0] is None and clip[1] is None):
        return "linear", None
    low, high = clip
    if low == 0.0 and high is None:
        return "relu", None
    if low == 0.0 and high == 6.0:
        return "relu6", None
    if low is not None and high is not None and low <= 0.0 <= high:
        return "linear", exact_range(low, high)
    return None, None


def per_channel_affine_as_depthwise(graph: Graph) -> None:
    """Per-channel affine layers on images -> DepthwiseConv2D 1x1, which XNNPACK runs in int8.

    Rescaling and Normalization (the converter would leave float MUL/ADD constants), a standalone
    BatchNormalization (frozen to its moving statistics, trainable), ``ScalarOp`` affines, and ``valid``
    AveragePooling2D (a kxk depthwise convolution with weights 1/(k*k)). Chains of constant 1x1 affines
    (EfficientNet's Rescaling -> Normalization) are merged into one convolution.
    """
    for name in list(graph.nodes):
        node = graph.nodes[name]
        if "quantize_config" in node.extra or node.class_name not in (
                "Rescaling", "Normalization", "BatchNormalization", "AveragePooling2D", "ScalarOp"):
            continue
        shape = _node_input_shape(graph, node)
        if shape is None or len(shape) != 4 or shape[-1] is None:
            continue
        channels = int(shape[-1])
        cfg = node.config
        if node.class_name == "Rescaling":
            scale = np.broadcast_to(np.asarray(cfg.get("scale", 1.0), "float32"), (channels,))
            offset = np.broadcast_to(np.asarray(cfg.get("offset", 0.0), "float32"), (channels,))
            _replace_with_depthwise(node, scale.copy(), offset.copy())
        elif node.class_name == "Normalization":
            affine = _normalization_affine(node, channels)
            if affine is not None:
                _replace_with_depthwise(node, *affine)
        elif node.class_name == "ScalarOp":
            activation, output_range = _scalar_activation(cfg["clip"])
            if activation is None:
                continue
            if output_range is not None:
                node.extra["output_range"] = output_range
            _replace_with_depthwise(node, np.full(channels, cfg["scale"], "float32"),
                                    np.full(channels, cfg["offset"], "float32"), activation=activation)
        elif node.class_name == "BatchNormalization":
            axis = cfg.get("axis", -1)
            axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
            if axis not in (-1, 3):
                continue
            gamma, beta, mean, var = bn_arrays(node.source.get_weights(), cfg.get("scale", True),
                                               cfg.get("center", True), channels)
            factor = gamma / np.sqrt(var + cfg.get("epsilon", 1e-3))
            _replace_with_depthwise(node, factor, beta - mean * factor, trainable=True)
        elif cfg.get("padding", "valid") == "valid" and cfg.get("data_format") in (None, "channels_last"):
            pool = tuple(cfg["pool_size"])
            strides = tuple(cfg.get("strides") or pool)
            kernel = np.full(pool + (channels,), 1.0 / (pool[0] * pool[1]), "float32")
            _replace_with_depthwise(node, kernel, None, kernel_size=pool, strides=strides)
    _merge_constant_affines(graph)


def _is_constant_affine(node: Node, allow_range: bool = False) -> bool:
    """A non-trainable 1x1 depthwise convolution made by these rewrites (a per-channel affine)."""
    return (node.class_name == "DepthwiseConv2D" and node.extra.get("non_trainable") and "weights" in node.extra
            and tuple(node.config["kernel_size"]) == (1, 1) and tuple(node.config["strides"]) == (1, 1)
            and (allow_range or "output_range" not in node.extra) and "quantize_config" not in node.extra)


def _merge_constant_affines(graph: Graph) -> None:
    for name in list(graph.nodes):
        node = graph.nodes.get(name)
        if node is None or not _is_constant_affine(node) or node.config["activation"] != "linear":
            continue
        reader = _sole_reader(graph, name)
        # The reader may carry an activation or a clip range: the merged affine keeps them.
        if reader is None or not _is_constant_affine(reader, allow_range=True):
            continue
        w1 = node.extra["weights"]["depthwise_kernel"].reshape(-1)
        b1 = node.extra["weights"].get("bias", np.zeros_like(w1))
        w2 = reader.extra["weights"]["depthwise_kernel"].reshape(-1)
        b2 = reader.extra["weights"].get("bias", np.zeros_like(w2))
        reader.extra["weights"] = {"depthwise_kernel": (w1 * w2).reshape(1, 1, -1, 1).astype("float32"),
                                   "bias": (b1 * w2 + b2).astype("float32")}
        reader.config["use_bias"] = True
        reader.calls = node.calls
        graph.remove(name)


# --------------------------------------------------------------------------------------- ReLU and pooling
def _producer_fuses_relu(graph: Graph, relu: Node) -> bool:
    """Whether TFLite fuses this ReLU into its producer: an Add/Subtract read by nothing else."""
    producer = graph.nodes[_input_ref(relu)[0]]
    return producer.class_name in ("Add", "Subtract") and _sole_reader(graph, producer.name) is relu


def standalone_relu_as_depthwise(graph: Graph) -> None:
    """ReLU/ReLU6 left on their own (their producer has other readers or cannot fuse them; XNNPACK does not
    delegate a standalone int8 RELU) -> identity depthwise 1x1 with the activation fused; a strided 1x1
    MaxPooling2D (ResNetV2's shortcut; not delegated) -> a strided identity depthwise 1x1."""
    for name in list(graph.nodes):
        node = graph.nodes[name]
        if "quantize_config" in node.extra or len(node.calls) != 1:
            continue
        shape = _node_input_shape(graph, node)
        if shape is None or len(shape) != 4 or shape[-1] is None:
            continue
        channels = int(shape[-1])
        kind = relu_kind(node)
        if kind is not None and not _producer_fuses_relu(graph, node):
            _replace_with_depthwise(node, np.ones(channels, "float32"), None, activation=kind)
        elif node.class_name == "MaxPooling2D" and tuple(node.config.get("pool_size", (2, 2))) == (1, 1):
            strides = tuple(node.config.get("strides") or (1, 1))
            if strides != (1, 1):
                _replace_with_depthwise(node, np.ones(channels, "float32"), None, strides=strides)


def same_average_pool(graph: Graph) -> None:
    """``same`` AveragePooling2D -> depthwise k x k sum / (k*k) ('same') and a :class:`BorderCorrection`.

    TFLite's average pool divides by the number of in-image elements of each window; the depthwise convolution
    divides by k*k everywhere, and the border positions are rescaled by the constant ``k*k / count``.
    """
    for name in list(graph.nodes):
        node = graph.nodes[name]
        cfg = node.config
        if (node.class_name != "AveragePooling2D" or "quantize_config" in node.extra
                or cfg.get("padding") != "same" or cfg.get("data_format") not in (None, "channels_last")):
            continue
        shape = _node_input_shape(graph, node)
        if shape is None or len(shape) != 4 or shape[-1] is None:
            continue
        channels = int(shape[-1])
        pool = tuple(cfg["pool_size"])
        strides = tuple(cfg.get("strides") or pool)
        input_size = None if strides == (1, 1) else shape[1:3]
        if input_size is not None and None in input_size:
            continue  # the border map of a strided pool needs the static input size
        conv_name = _fresh(graph, f"{name}_sum")
        conv = _depthwise(conv_name, np.full(pool + (channels,), 1.0 / (pool[0] * pool[1]), "float32"), None,
                          node.calls, pool, strides, "same")
        _insert_before(graph, name, conv)
        _same_shape(graph, conv_name, name)
        node.class_name, node.source = "BorderCorrection", None
        node.config = {"name": name, "pool_size": pool, "strides": (1, 1) if input_size is None else strides,
                       "input_size": input_size}
        node.calls = [[[conv_name, 0, 0, {}]]]


def split_wide_concat(graph: Graph) -> None:
    """Concatenate of more than :data:`MAX_CONCAT_INPUTS` tensors -> nested concatenations along the same axis."""
    for name in list(graph.nodes):
        node = graph.nodes[name]
        if node.class_name != "Concatenate" or "quantize_config" in node.extra or len(node.calls) != 1:
            continue
        refs = iter_refs(node.calls[0])
        while len(refs) > MAX_CONCAT_INPUTS:
            inner_name = _fresh(graph, f"{name}_part")
            inner = Node(inner_name, "Concatenate", dict(node.config, name=inner_name),
                         [[list(r) for r in refs[:MAX_CONCAT_INPUTS]]])
            _insert_before(graph, name, inner)
            refs = [[inner_name, 0, 0, {}]] + [list(r) for r in refs[MAX_CONCAT_INPUTS:]]
        node.calls = [refs]


def nearest_upsampling(graph: Graph) -> None:
    """UpSampling2D with nearest interpolation -> :class:`~tfq_ext.qat.xnnpack.NearestUpsampling2D`."""
    for node in graph.nodes.values():
        cfg = node.config
        if (node.class_name == "UpSampling2D" and "quantize_config" not in node.extra
                and cfg.get("interpolation", "nearest") == "nearest"
                and cfg.get("data_format") in (None, "channels_last")):
            node.class_name, node.source = "NearestUpsampling2D", None
            node.config = {"name": node.name, "size": tuple(cfg.get("size", (2, 2)))}


def prelu_as_depthwise(graph: Graph) -> None:
    """PReLU with one slope per channel, all <= 1 -> ``a*x + relu((1-a)*x)``: two depthwise 1x1 convolutions
    (the second with ReLU fused) and an Add, all delegated (XNNPACK has no int8 PRELU). The two kernels train
    independently in QAT, a superset of PReLU that the file computes exactly."""
    for name in list(graph.nodes):
        node = graph.nodes[name]
        if node.class_name != "PReLU" or "quantize_config" in node.extra or len(node.calls) != 1:
            continue
        shape = _node_input_shape(graph, node)
        alpha = node.source.get_weights()[0] if node.source is not None else None
        if shape is None or len(shape) != 4 or alpha is None:
            continue
        channels = int(shape[-1])
        if alpha.size != channels or np.any(alpha > 1.0):
            continue  # per-position slopes or slopes > 1 stay a PRELU op (integer, not delegated)
        alpha = alpha.reshape(-1).astype("float32")
        linear = _depthwise(_fresh(graph, f"{name}_negative"), alpha, None, node.calls, trainable=True)
        positive = _depthwise(_fresh(graph, f"{name}_positive"), 1.0 - alpha, None, node.calls, activation="relu",
                              trainable=True)
        _insert_before(graph, name, linear)
        _insert_before(graph, name, positive)
        _same_shape(graph, linear.name, name)
        _same_shape(graph, positive.name, name)
        node.class_name, node.source, node.config = "Add", None, {"name": name}
        node.calls = [[[linear.name, 0, 0, {}], [positive.name, 0, 0, {}]]]


def split_scalar_ops(graph: Graph) -> None:
    """ScalarOps left (not on images) with both a scale and an offset -> a MUL then an ADD, each with its own
    quantized output (TFLite has no int8 op for both at once); the clip stays with the last one."""
    for name in list(graph.nodes):
        node = graph.nodes[name]
        cfg = node.config
        if node.class_name != "ScalarOp" or cfg["scale"] == 1.0 or cfg["offset"] == 0.0:
            continue
        mul = _scalar_op(_fresh(graph, f"{name}_scale"), cfg["scale"], 0.0, None, node.calls)
        _insert_before(graph, name, mul)
        cfg["scale"] = 1.0
        node.calls = [[[mul.name, 0, 0, {}]]]


def drop_identities(graph: Graph) -> None:
    """Removes ``Activation("linear")`` layers: TFLite has no op for them, so they must not quantize twice."""
    for name in list(graph.nodes):
        node = graph.nodes[name]
        if (node.class_name == "Activation" and node.config.get("activation") == "linear"
                and "quantize_config" not in node.extra and len(node.calls) == 1):
            source = _input_ref(node)
            if source[1] != 0 or source[2] != 0:
                continue
            graph.replace_refs(name, source[0])
            graph.remove(name)


def fold_layer_scale(graph: Graph) -> None:
    """ConvNeXt's LayerScale (``x * gamma`` per channel) -> folded into the Dense/Conv that alone feeds it
    (kernel and bias columns times gamma, exact), else a trainable depthwise 1x1 convolution on images."""
    from tfq_ext.qat.configs import KERNEL_LAYOUTS

    for name in list(graph.nodes):
        node = graph.nodes[name]
        if node.class_name != "LayerScale" or "quantize_config" in node.extra or node.source is None:
            continue
        gamma = node.source.get_weights()[0].reshape(-1).astype("float32")
        producer = graph.nodes[_input_ref(node)[0]]
        if (producer.class_name in ("Dense", "Conv2D") and producer.source is not None
                and _sole_reader(graph, producer.name) is node and producer.config.get("activation") == "linear"
                and "quantize_config" not in producer.extra):
            attr = KERNEL_LAYOUTS[producer.class_name][0]
            named = producer.extra.get("weights") or {
                v.name.split("/")[-1].split(":")[0]: v.numpy() for v in producer.source.weights}
            named = dict(named, **{attr: named[attr] * gamma})
            if "bias" in named:
                named["bias"] = named["bias"] * gamma
            producer.extra["weights"] = named
            graph.replace_refs(name, producer.name)
            graph.remove(name)
            continue
        shape = _node_input_shape(graph, node)
        if shape is not None and len(shape) == 4:
            _replace_with_depthwise(node, gamma, None, trainable=True)


def layer_normalization(graph: Graph) -> None:
    """LayerNormalization over the last axis -> ``QuantLayerNormalization`` (intermediates quantized)."""
    for node in graph.nodes.values():
        if node.class_name != "LayerNormalization" or "quantize_config" in node.extra:
            continue
        axis = node.config.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        shape = _node_input_shape(graph, node)
        if axis != -1 and (shape is None or axis != len(shape) - 1):
            continue
        node.class_name = "QuantLayerNormalization"
        node.config = {"name": node.name, "epsilon": node.config.get("epsilon", 1e-3),
                       "center": node.config.get("center", True), "scale": node.config.get("scale", True)}


def clip_as_relu6(graph: Graph) -> None:
    """For float graphs: a ScalarOp clipped to [low, high] (not [0, 6]) -> ``relu6`` of a rescaled affine, then
    the inverse rescale: ``clip(z, l, h) = l + (h - l) / 6 * relu6(6 (z - l) / (h - l))``, exact in float and
    two 1x1 depthwise convolutions (QAT does the clip with the int8 saturation of a fixed range instead)."""
    for name in list(graph.nodes):
        node = graph.nodes[name]
        clip = node.config.get("clip") if node.class_name == "ScalarOp" else None
        if clip is None or clip[0] is None or clip[1] is None or list(clip) == [0.0, 6.0] or clip[1] <= clip[0]:
            continue
        low, high = clip
        span = high - low
        inner = _scalar_op(_fresh(graph, f"{name}_clip"), 6.0 * node.config["scale"] / span,
                           6.0 * (node.config["offset"] - low) / span, [0.0, 6.0], node.calls)
        _insert_before(graph, name, inner)
        _same_shape(graph, inner.name, name)
        node.config = {"name": name, "scale": span / 6.0, "offset": low, "clip": None}
        node.calls = [[[inner.name, 0, 0, {}]]]


def lower_for_delegate(graph: Graph) -> None:
    """The rewrites of ops XNNPACK has no int8 kernel for, in the order they depend on each other (after
    BN folding and ReLU fusion): shared-Add ReLUs, `same` average pools, wide concatenations, nearest
    upsampling, PReLU, and scalar ops split to what is left."""
    standalone_relu_as_depthwise(graph)
    same_average_pool(graph)
    split_wide_concat(graph)
    nearest_upsampling(graph)
    prelu_as_depthwise(graph)
    split_scalar_ops(graph)
