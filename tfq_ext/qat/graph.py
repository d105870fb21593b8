"""A flat, editable view of a Keras model's layer graph, and rebuilding a model from it.

Built from the public ``get_config()`` of Sequential and functional models; models nested inside the model (at
any depth, called once or several times) are inlined, so rewrites such as conv+BN folding see across model
boundaries. Each node keeps the original layer object, from which weights are copied after rebuilding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from tfq_ext._compat import is_graph_model, skips_first_node
from tfq_ext._keras import keras

__all__ = ["Node", "Graph", "flatten_model", "check_graph_model", "normalize_tf_op"]

_MODEL_CLASSES = ("Functional", "Sequential", "Model")


@dataclass
class Node:
    """One layer of the flat graph.

    Attributes:
        name: unique layer name in the flat graph.
        class_name: the layer's Keras class name.
        config: the layer's config (edited by rewrites).
        calls: one entry per call of the layer; each is the serialized call data of tf_keras' functional
            config (refs ``[layer_name, call_index, tensor_index, kwargs]``), with call indices relative to the
            calling layer's ``calls`` list.
        source: the original layer object whose weights initialise this node (None for new layers).
        extra: free-form data rewrites attach (e.g. the BN layer folded into a conv).
    """

    name: str
    class_name: str
    config: Dict[str, Any]
    calls: List[Any]
    source: Optional[keras.layers.Layer] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    nodes: Dict[str, Node]  # insertion order is a valid topological order
    inputs: List[list]      # refs [name, call, tensor]
    outputs: List[list]
    # Output shapes (one per output tensor, batch included) of the original layers, by flat node name. Rewrites
    # keep a node's name when they keep its output, so the shapes stay valid; nodes they add have none.
    shapes: Dict[str, List[tuple]] = field(default_factory=dict)

    def ref_shape(self, ref) -> Optional[tuple]:
        """Static shape of the tensor ``ref`` points at, or None when unknown."""
        shapes = self.shapes.get(ref[0])
        return tuple(shapes[ref[2]]) if shapes is not None and len(shapes) > ref[2] else None

    def consumers(self, name: str) -> List[str]:
        """Names of the nodes that take any output of ``name`` as an input."""
        found = []
        for node in self.nodes.values():
            if any(ref[0] == name for call in node.calls for ref in iter_refs(call)):
                found.append(node.name)
        return found

    def is_output(self, name: str) -> bool:
        return any(ref[0] == name for ref in self.outputs)

    def replace_refs(self, old: str, new: str) -> None:
        """Points every reference to layer ``old`` (call 0) at layer ``new`` instead."""
        def swap(ref):
            return [new] + list(ref[1:]) if ref[0] == old else ref

        for node in self.nodes.values():
            node.calls = [map_refs(call, swap) for call in node.calls]
        self.outputs = [swap(ref) for ref in self.outputs]

    def remove(self, name: str) -> None:
        del self.nodes[name]


def _is_ref(obj) -> bool:
    return (isinstance(obj, (list, tuple)) and len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int)
            and obj[0] != _CONSTANT)


# tf_keras records `x + 3.0`, `x * y`, `tf.nn.relu6(x)` on KerasTensors as TFOpLambda layers whose call holds the
# second operand in the kwargs (`{"y": 3.0}` or `{"y": [layer, node, tensor]}`) and a constant first operand as
# `["_CONSTANT_VALUE", -1, value, kwargs]`. They are normalised here into merge layers (tensor op tensor), `ScalarOp`
# nodes (tensor op constant, an affine ``scale * x + offset``) and Activation layers, so that every rewrite sees
# their inputs as ordinary refs.
_CONSTANT = "_CONSTANT_VALUE"
_TF_BINARY = {"__operators__.add": "add", "math.add": "add", "math.subtract": "subtract",
              "math.multiply": "multiply", "math.truediv": "divide", "math.divide": "divide",
              "math.maximum": "maximum", "math.minimum": "minimum"}
_MERGE_CLASSES = {"add": "Add", "subtract": "Subtract", "multiply": "Multiply", "maximum": "Maximum",
                  "minimum": "Minimum"}
_TF_ACTIVATIONS = {"nn.relu": "relu", "nn.relu6": "relu6", "math.sigmoid": "sigmoid", "nn.sigmoid": "sigmoid",
                   "math.tanh": "tanh", "nn.tanh": "tanh", "nn.silu": "swish", "nn.swish": "swish",
                   "nn.gelu": "gelu", "nn.leaky_relu": "leaky_relu"}


def _scalar(value):
    """A Python float for a scalar constant operand, else None."""
    try:
        array = np.asarray(value, dtype="float64")
    except (TypeError, ValueError):
        return None
    return float(array) if array.ndim == 0 or array.size == 1 else None


def normalize_tf_op(config: dict, call) -> tuple:
    """``(class_name, config, call)`` for one call of a TFOpLambda layer (see the comment above).

    Functions without a known integer form are returned as TFOpLambda with the tensor operands as plain refs,
    so that the graph stays resolvable and the support check can name them.
    """
    name = config["name"]
    head = call if isinstance(call, (list, tuple)) and len(call) >= 3 and isinstance(call[0], str) else None
    if head is None:
        return "TFOpLambda", config, call
    kwargs = dict(head[3]) if len(head) > 3 and isinstance(head[3], dict) else {}
    first = None if head[0] == _CONSTANT else [head[0], head[1], head[2], {}]
    first_value = head[2] if head[0] == _CONSTANT else None
    second = kwargs.get("y")
    second_ref = [second[0], second[1], second[2], {}] if _is_ref(second) else None
    function = config.get("function", "")
    if function in _TF_BINARY and set(kwargs) <= {"y", "name"}:
        op = _TF_BINARY[function]
        if first is not None and second_ref is not None and op in _MERGE_CLASSES:
            return _MERGE_CLASSES[op], {"name": name}, [first, second_ref]
        tensor, constant, constant_first = ((first, _scalar(second), False) if first is not None and second_ref is None
                                            else (second_ref, _scalar(first_value), True))
        affine = _affine(op, constant, constant_first)
        if tensor is not None and affine is not None:
            return "ScalarOp", {"name": name, "scale": affine[0], "offset": affine[1], "clip": None}, [tensor]
    elif function in _TF_ACTIVATIONS and first is not None and not (set(kwargs) - {"name"}):
        return "Activation", {"name": name, "activation": _TF_ACTIVATIONS[function]}, [first]
    elif function == "math.negative" and first is not None:
        return "ScalarOp", {"name": name, "scale": -1.0, "offset": 0.0, "clip": None}, [first]
    refs = [ref for ref in ([first] if first else []) + ([second_ref] if second_ref else [])]
    return "TFOpLambda", config, refs


def _affine(op: str, constant, constant_first: bool):
    """(scale, offset) of ``x op c`` (or ``c op x``) as ``scale * x + offset``; None when it is not affine."""
    if constant is None:
        return None
    if op == "add":
        return 1.0, constant
    if op == "multiply":
        return constant, 0.0
    if op == "subtract":
        return (-1.0, constant) if constant_first else (1.0, -constant)
    if op == "divide" and not constant_first and constant != 0.0:
        return 1.0 / constant, 0.0
    return None


def iter_refs(call) -> List[list]:
    """All refs inside one call's serialized data (a ref, or a list of refs)."""
    if _is_ref(call):
        return [call]
    if isinstance(call, (list, tuple)):
        return [ref for item in call for ref in iter_refs(item)]
    return []


def map_refs(call, fn: Callable[[list], list]):
    if _is_ref(call):
        return fn(list(call))
    if isinstance(call, (list, tuple)):
        return [map_refs(item, fn) for item in call]
    return call


def _sequential_as_functional(model: keras.Sequential, config: dict) -> dict:
    """Functional-style config of a Sequential model (a chain), built from its public config."""
    layers = []
    previous = None
    for i, layer_config in enumerate(config["layers"]):
        entry = {"class_name": layer_config["class_name"], "config": layer_config["config"],
                 "name": layer_config["config"]["name"], "inbound_nodes": []}
        if i == 0 and layer_config["class_name"] != "InputLayer":
            input_name = f"{model.name}_input"
            layers.append({"class_name": "InputLayer", "name": input_name, "inbound_nodes": [],
                           "config": {"batch_input_shape": list(model.input_shape), "dtype": "float32",
                                      "sparse": False, "ragged": False, "name": input_name}})
            previous = input_name
        if previous is not None:
            entry["inbound_nodes"] = [[[previous, 0, 0, {}]]]
        layers.append(entry)
        previous = entry["name"]
    return {"name": config.get("name", model.name), "layers": layers, "input_layers": [[layers[0]["name"], 0, 0]],
            "output_layers": [[previous, 0, 0]]}


def check_graph_model(model, arg_name: str = "model") -> None:
    """Raises a clear error for a subclassed model, whose layer graph exists only inside its Python ``call``."""
    if is_graph_model(model):
        return
    raise ValueError(
        f"`{arg_name}` ({model.name!r}, class {type(model).__name__}) is a subclassed model: its layers are "
        f"connected only inside its Python `call()`, so there is no layer graph to quantize. Rebuild it as a "
        f"functional or Sequential model: create the layers as before, then call them on `keras.Input` tensors "
        f"(`inputs = keras.Input(shape); x = layer_a(inputs); ...; model = keras.Model(inputs, outputs)`) and "
        f"copy the weights with `functional.set_weights(subclassed.get_weights())`. Wrapping the subclassed model "
        f"in `keras.Model(inputs, subclassed(inputs))` is not enough: its inner layers stay hidden. "
        f"Received: {arg_name}={model!r}")


def _model_config(model: keras.Model, arg_name: str) -> dict:
    check_graph_model(model, arg_name)
    config = model.get_config()
    if isinstance(model, keras.Sequential):
        config = _sequential_as_functional(model, config)
    return copy.deepcopy(config)


def flatten_model(model: keras.Model) -> Graph:
    """Flat graph of ``model`` with every nested Sequential/functional model inlined."""
    nodes: Dict[str, Node] = {}
    inputs, outputs = _inline(model, nodes, owners={}, prefix="", outer_inputs=None)
    graph = Graph(nodes=nodes, inputs=inputs, outputs=outputs)
    for node in nodes.values():
        if node.class_name == "InputLayer":
            graph.shapes[node.name] = [tuple(node.config.get("batch_input_shape") or node.config.get("batch_shape"))]
        elif node.source is not None:
            shapes = _output_shapes(node.source)
            if shapes is not None:
                graph.shapes[node.name] = shapes
    return graph


def _output_shapes(layer) -> Optional[List[tuple]]:
    """The output shapes of a layer's first call (shared layers see the same shapes in every call)."""
    try:
        shape = layer.get_output_shape_at(0)
    except (AttributeError, RuntimeError, ValueError):
        return None
    if isinstance(shape, tuple) or (isinstance(shape, list) and shape and not isinstance(shape[0], (list, tuple))):
        return [tuple(shape)]
    return [tuple(s) for s in shape] if isinstance(shape, list) else None


def _unique(name: str, nodes: Dict[str, Node], prefix: str) -> str:
    candidate = name if name not in nodes else f"{prefix}{name}"
    k = 1
    while candidate in nodes:
        candidate = f"{prefix}{name}_{k}"
        k += 1
    return candidate


class _Pending(Exception):
    """A ref whose producing call has not been placed yet (a shared layer called later in the graph)."""


def _inline(model: keras.Model, nodes: Dict[str, Node], owners: Dict[int, str], prefix: str,
            outer_inputs: Optional[List[list]]):
    """Adds one invocation of ``model`` to ``nodes``; returns (input refs, output refs) in the flat graph.

    ``outer_inputs`` holds, for a nested model, the flat-graph refs of the tensors it is called on. A layer
    object met again (a nested model called several times) gets one more call on its existing node, so
    weights stay shared. Calls whose inputs are not placed yet are retried, as tf_keras' own loader does.
    """
    config = _model_config(model, "model" if outer_inputs is None else f"nested model {model.name!r} of model")
    input_names = [ref[0] for ref in config["input_layers"]]
    placed: Dict[tuple, tuple] = {}        # (name, call index in refs) -> (flat node name, flat call index)
    nested: Dict[tuple, List[list]] = {}   # (nested model name, call index in refs) -> its output refs

    def resolve(ref):
        name, call, tensor = ref[0], ref[1], ref[2]
        kwargs = ref[3] if len(ref) > 3 else {}
        if (name, call) in nested:
            return list(nested[(name, call)][tensor][:3]) + [kwargs]
        if outer_inputs is not None and name in input_names:
            return list(outer_inputs[input_names.index(name)][:3]) + [kwargs]
        if (name, call) not in placed:
            raise _Pending(name)
        flat_name, flat_call = placed[(name, call)]
        return [flat_name, flat_call, tensor, kwargs]

    work = []
    for layer_config in config["layers"]:
        name = layer_config.get("name") or layer_config["config"]["name"]
        class_name = layer_config["class_name"]
        layer = None if class_name == "InputLayer" else model.get_layer(name)
        inbound = layer_config.get("inbound_nodes", [])
        if class_name == "InputLayer":
            if outer_inputs is None:
                flat = _unique(name, nodes, prefix)
                nodes[flat] = Node(flat, class_name, layer_config["config"], [], source=None)
                nodes[flat].config["name"] = flat
                placed[(name, 0)] = (flat, 0)
            continue
        offset = 1 if skips_first_node(layer) else 0
        work.extend((layer_config, layer, k, call, offset) for k, call in enumerate(inbound))

    while work:
        remaining = []
        for item in work:
            layer_config, layer, k, call, offset = item
            name, class_name = layer.name, layer_config["class_name"]
            node_config = layer_config["config"]
            if class_name == "TFOpLambda":
                class_name, node_config, call = normalize_tf_op(copy.deepcopy(node_config), call)
            try:
                if class_name in _MODEL_CLASSES or isinstance(layer, keras.Model):
                    refs = [resolve(ref)[:3] for ref in iter_refs(call)]
                    _, nested[(name, k + offset)] = _inline(layer, nodes, owners, f"{name}_", refs)
                    continue
                mapped = map_refs(call, resolve)
            except _Pending:
                remaining.append(item)
                continue
            flat = owners.get(id(layer))
            if flat is None:
                flat = _unique(name, nodes, prefix)
                owners[id(layer)] = flat
                node_config = dict(node_config, name=flat)
                nodes[flat] = Node(flat, class_name, node_config, [], source=layer)
            placed[(name, k)] = (flat, len(nodes[flat].calls))
            nodes[flat].calls.append(mapped)
        if len(remaining) == len(work):
            raise ValueError(f"the graph of model {model.name!r} could not be resolved: layers "
                             f"{sorted({item[1].name for item in remaining})} wait for inputs that never come")
        work = remaining

    outputs = [resolve(ref)[:3] for ref in config["output_layers"]]
    inputs = [resolve(ref)[:3] for ref in config["input_layers"]] if outer_inputs is None else outer_inputs
    return inputs, outputs
