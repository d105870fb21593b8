"""Graph rewrites that make a float model's graph match integer-only inference before quantizers are attached.

- ``split_separable``: SeparableConv2D -> DepthwiseConv2D + 1x1 Conv2D (TFLite runs it as those two ops, with an
  int8 tensor between them, so training must quantize that tensor too).
- ``split_activation``: a kernel layer with an activation TFLite cannot fuse (sigmoid, softmax, ...) becomes the
  layer plus a separate Activation layer.
- ``fold_batch_norms``: kernel layer + BatchNormalization -> one :class:`FoldedBatchNorm` node.
- ``fuse_relu``: kernel/folded layer + ReLU/ReLU6 -> the layer with a fused activation (TFLite fuses them, so
  there must be no quantizer between them).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tfq_ext.qat.configs import KERNEL_LAYOUTS
from tfq_ext.qat.graph import Graph, Node, iter_refs

__all__ = ["split_separable", "split_activation", "fold_batch_norms", "fuse_relu", "relu_kind", "bn_arrays",
           "FUSABLE_ACTIVATIONS"]

FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")


def _sole_consumer(graph: Graph, name: str) -> Optional[Node]:
    """The node that alone consumes ``name``, call by call: its k-th call takes exactly ``name``'s k-th output.

    Shared layers qualify when both are shared the same way (a nested model called several times).
    """
    node = graph.nodes[name]
    if graph.is_output(name):
        return None
    consumers = graph.consumers(name)
    if len(consumers) != 1:
        return None
    consumer = graph.nodes[consumers[0]]
    if len(consumer.calls) != len(node.calls):
        return None
    for k, call in enumerate(consumer.calls):
        refs = iter_refs(call)
        if len(refs) != 1 or refs[0][0] != name or refs[0][1] != k or refs[0][2] != 0:
            return None
    return consumer


def relu_kind(node: Node) -> Optional[str]:
    """'relu' or 'relu6' when the node is a plain ReLU/ReLU6 layer that TFLite fuses into its producer."""
    config = node.config
    if node.class_name == "ReLU":
        if float(config.get("negative_slope", 0.0) or 0.0) != 0.0 or float(config.get("threshold", 0.0) or 0.0):
            return None
        max_value = config.get("max_value")
        if max_value is None:
            return "relu"
        return "relu6" if float(max_value) == 6.0 else None
    if node.class_name == "Activation" and config.get("activation") in ("relu", "relu6"):
        return config["activation"]
    return None


def _insert_after(graph: Graph, name: str, new: Node) -> None:
    """Adds ``new`` right after ``name`` in the order, consuming it, and moves ``name``'s consumers to it."""
    graph.replace_refs(name, new.name)
    new.calls = [[[name, 0, 0, {}]]]
    _insert_node(graph, name, new, after=True)


def _insert_node(graph: Graph, anchor: str, new: Node, after: bool) -> None:
    """Puts ``new`` into the node order right before or after ``anchor`` (the order the model is rebuilt in)."""
    items = list(graph.nodes.items())
    index = [k for k, _ in items].index(anchor) + (1 if after else 0)
    items.insert(index, (new.name, new))
    graph.nodes.clear()
    graph.nodes.update(items)


def _fresh_name(graph: Graph, base: str) -> str:
    name, k = base, 1
    while name in graph.nodes:
        name, k = f"{base}_{k}", k + 1
    return name


def split_separable(graph: Graph) -> None:
    for name in [n for n, node in graph.nodes.items() if node.class_name == "SeparableConv2D"]:
        node = graph.nodes[name]
        cfg = node.config
        weights = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in node.source.weights} \
            if node.source is not None else None
        depthwise_name = _fresh_name(graph, f"{name}_depthwise")
        depthwise_cfg = {"name": depthwise_name, "kernel_size": cfg["kernel_size"], "strides": cfg["strides"],
                         "padding": cfg["padding"], "depth_multiplier": cfg.get("depth_multiplier", 1),
                         "data_format": cfg.get("data_format"), "dilation_rate": cfg.get("dilation_rate", (1, 1)),
                         "activation": "linear", "use_bias": False, "trainable": cfg.get("trainable", True)}
        pointwise_cfg = {"name": name, "filters": cfg["filters"], "kernel_size": (1, 1), "strides": (1, 1),
                         "padding": "valid", "activation": cfg.get("activation", "linear"),
                         "use_bias": cfg.get("use_bias", True), "trainable": cfg.get("trainable", True)}
        depthwise = Node(depthwise_name, "DepthwiseConv2D", depthwise_cfg, node.calls)
        pointwise = Node(name, "Conv2D", pointwise_cfg, [[[depthwise_name, 0, 0, {}]]])
        if weights is not None:
            depthwise.extra["weights"] = {"depthwise_kernel": weights["depthwise_kernel"]}
            pointwise.extra["weights"] = {"kernel": weights["pointwise_kernel"]}
            if "bias" in weights:
                pointwise.extra["weights"]["bias"] = weights["bias"]
        items = list(graph.nodes.items())
        index = [k for k, _ in items].index(name)
        items[index:index + 1] = [(depthwise_name, depthwise), (name, pointwise)]
        graph.nodes.clear()
        graph.nodes.update(items)


def split_activation(graph: Graph) -> None:
    for name in [n for n, node in graph.nodes.items() if node.class_name in KERNEL_LAYOUTS]:
        node = graph.nodes[name]
        activation = node.config.get("activation", "linear")
        if activation in FUSABLE_ACTIVATIONS:
            continue
        node.config["activation"] = "linear"
        act_name = _fresh_name(graph, f"{name}_{activation if isinstance(activation, str) else 'activation'}")
        _insert_after(graph, name, Node(act_name, "Activation", {"name": act_name, "activation": activation}, []))


def fold_batch_norms(graph: Graph, weight_quantizer_for, freeze_bn_delay: Optional[int]) -> None:
    """Folds each BatchNormalization into the kernel layer that alone feeds it (channels-last only)."""
    for name in list(graph.nodes):
        node = graph.nodes.get(name)
        if node is None or node.class_name not in KERNEL_LAYOUTS or "quantize_config" in node.extra:
            continue
        if node.config.get("activation", "linear") != "linear":
            continue
        bn = _sole_consumer(graph, name)
        if bn is None or bn.class_name != "BatchNormalization" or "quantize_config" in bn.extra:
            continue
        axis = bn.config.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if axis not in (-1, len(_output_rank_hint(node)) - 1):
            continue
        attr, _, _ = KERNEL_LAYOUTS[node.class_name]
        folded_cfg = {
            "name": name,
            "layer": {"class_name": node.class_name, "config": dict(node.config)},
            "kernel_attr": attr,
            "weight_quantizer": weight_quantizer_for(node.class_name),
            "epsilon": bn.config.get("epsilon", 1e-3), "momentum": bn.config.get("momentum", 0.99),
            "center": bn.config.get("center", True), "scale": bn.config.get("scale", True),
            "activation": "linear", "freeze_bn_delay": freeze_bn_delay,
        }
        named = node.extra.get("weights")
        if named is None and node.source is not None:
            named = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in node.source.weights}
        kernel_weights = None if named is None else [named[attr]] + ([named["bias"]] if "bias" in named else [])
        bn_weights = bn.source.get_weights() if bn.source is not None else None
        folded = Node(name, "FoldedBatchNorm", folded_cfg, node.calls, source=None,
                      extra={"kernel_weights": kernel_weights, "bn_weights": bn_weights,
                             "bn_flags": (folded_cfg["scale"], folded_cfg["center"])})
        graph.nodes[name] = folded
        graph.replace_refs(bn.name, name)
        graph.remove(bn.name)


def _output_rank_hint(node: Node):
    # Channels-last kernel layers: the BN axis -1 always matches; an explicit positive axis is checked against
    # the layer's output rank (Dense on 2-D input: rank 2; Conv2D: rank 4).
    ranks = {"Dense": 2, "Conv1D": 3, "Conv2D": 4, "Conv3D": 5, "Conv2DTranspose": 4, "DepthwiseConv2D": 4}
    return [0] * ranks.get(node.class_name, 4)


def fuse_relu(graph: Graph) -> None:
    for name in list(graph.nodes):
        node = graph.nodes.get(name)
        if node is None or "quantize_config" in node.extra:
            continue
        if node.class_name not in KERNEL_LAYOUTS and node.class_name != "FoldedBatchNorm":
            continue
        if node.config.get("activation", "linear") != "linear":
            continue
        consumer = _sole_consumer(graph, name)
        kind = relu_kind(consumer) if consumer is not None and "quantize_config" not in consumer.extra else None
        if kind is None:
            continue
        node.config["activation"] = kind
        if node.class_name == "FoldedBatchNorm":
            node.config["layer"]["config"]["activation"] = "linear"
        graph.replace_refs(consumer.name, name)
        graph.remove(consumer.name)


def bn_arrays(bn_weights, scale: bool, center: bool, channels: int):
    """(gamma, beta, moving_mean, moving_variance) from a BatchNormalization's weight list."""
    weights = list(bn_weights)
    gamma = weights.pop(0) if scale else np.ones(channels, "float32")
    beta = weights.pop(0) if center else np.zeros(channels, "float32")
    return gamma, beta, weights[0], weights[1]
