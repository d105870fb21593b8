"""A flat, editable view of a Keras model's layer graph, and rebuilding a model from it.

Built from the public ``get_config()`` of Sequential and functional models; models nested inside the model (at
any depth, called once or several times) are inlined, so rewrites such as conv+BN folding see across model
boundaries. Each node keeps the original layer object, from which weights are copied after rebuilding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from tfq_ext._compat import skips_first_node
from tfq_ext._keras import keras

__all__ = ["Node", "Graph", "flatten_model"]

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
    return isinstance(obj, (list, tuple)) and len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int)


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


def _model_config(model: keras.Model) -> dict:
    config = model.get_config()
    if isinstance(model, keras.Sequential):
        config = _sequential_as_functional(model, config)
    return copy.deepcopy(config)


def flatten_model(model: keras.Model) -> Graph:
    """Flat graph of ``model`` with every nested Sequential/functional model inlined."""
    nodes: Dict[str, Node] = {}
    inputs, outputs = _inline(model, nodes, owners={}, prefix="", outer_inputs=None)
    return Graph(nodes=nodes, inputs=inputs, outputs=outputs)


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
    config = _model_config(model)
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
        name = layer_config.get("name", layer_config["config"]["name"])
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
                node_config = layer_config["config"]
                node_config["name"] = flat
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
