"""INT8 TFLite export of a GraphTensor model trained with Degree-Quant.

TFLite has no GraphTensor input, so (tf-gnn's own pattern for TFLite) the trained model is wrapped in a model
whose inputs are plain tensors, node features ``[num_nodes, F]`` and the source/target node index of every
edge ``[num_edges]``; a layer inside builds the one-component GraphTensor and calls the trained model. The
fake-quant ranges learned in training become the int8 scales of the file; nothing is recalibrated.

What the converter leaves float (measured with TF 2.21): TFLite has no int8 kernel for UNSORTED_SEGMENT_SUM,
so every aggregation (tf-gnn's ``pool``) runs as DEQUANTIZE -> float sum -> QUANTIZE, and the GCN degree
normalisation (in-degree count, rsqrt) is computed in float from the edge indices. With
``integer_aggregation=True`` (the default) ``convert_graph_model`` replaces each of those subgraphs by one
integer custom op of ``tflite_export/kernels`` (``tflite_export.graph_ops``: int8 in, int32 sums, one
requantization; the gather onto edges fused into the sum; the GCN's 1/sqrt(degree) folded into per-node
fixed-point multipliers), so nothing between the float input's QUANTIZE and the output's DEQUANTIZE is float.
Such a file needs the kernels (:class:`GraphInterpreter` registers them). ``float_ops`` gives the histogram of
ops per dtype so a caller can see exactly what runs on what.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow_gnn as tfgnn

from tflite_export import graph_ops
from tflite_export._graph import check_flatbuffer, dtype_name, load_static_graph
from tflite_export.runtime import make_interpreter
from tfq_ext._keras import keras, tf

__all__ = ["plain_tensor_model", "convert_graph_model", "float_ops", "GraphInterpreter"]


@keras.utils.register_keras_serializable(package="tfq_ext")
class _BuildGraph(keras.layers.Layer):
    """Plain tensors -> a homogeneous one-component GraphTensor (node set, edge set, one node feature)."""

    def __init__(self, node_set_name: str, edge_set_name: str, feature_name: str, **kwargs):
        super().__init__(**kwargs)
        self.node_set_name = node_set_name
        self.edge_set_name = edge_set_name
        self.feature_name = feature_name

    def call(self, inputs):
        features, source, target = inputs
        num_nodes = tf.shape(features, out_type=source.dtype)[:1]
        num_edges = tf.shape(source, out_type=source.dtype)[:1]
        return tfgnn.GraphTensor.from_pieces(
            node_sets={self.node_set_name: tfgnn.NodeSet.from_fields(
                sizes=num_nodes, features={self.feature_name: features})},
            edge_sets={self.edge_set_name: tfgnn.EdgeSet.from_fields(
                sizes=num_edges, adjacency=tfgnn.Adjacency.from_indices(
                    source=(self.node_set_name, source), target=(self.node_set_name, target)))})

    def get_config(self):
        return dict(super().get_config(), node_set_name=self.node_set_name, edge_set_name=self.edge_set_name,
                    feature_name=self.feature_name)


def _homogeneous_names(spec: tfgnn.GraphTensorSpec):
    if len(spec.node_sets_spec) != 1 or len(spec.edge_sets_spec) != 1:
        raise ValueError("plain_tensor_model() needs a model whose GraphTensor input has exactly one node set and "
                         f"one edge set. Received node sets {sorted(spec.node_sets_spec)}, edge sets "
                         f"{sorted(spec.edge_sets_spec)}.")
    node_set_name = next(iter(spec.node_sets_spec))
    edge_set_name = next(iter(spec.edge_sets_spec))
    node_spec = spec.node_sets_spec[node_set_name]
    edge_spec = spec.edge_sets_spec[edge_set_name]
    if len(node_spec.features_spec) != 1 or edge_spec.features_spec or spec.context_spec.features_spec:
        raise ValueError("plain_tensor_model() supports one node feature and no edge or context features. "
                         f"Received node features {sorted(node_spec.features_spec)}, edge features "
                         f"{sorted(edge_spec.features_spec)}, context features "
                         f"{sorted(spec.context_spec.features_spec)}.")
    feature_name = next(iter(node_spec.features_spec))
    return node_set_name, edge_set_name, feature_name, node_spec.features_spec[feature_name]


def plain_tensor_model(model: keras.Model) -> keras.Model:
    """Wraps a model with one GraphTensor input into a model on (node features, source, target) tensors.

    The returned model shares the trained layers (no copy of the weights). Graphs of any size can be fed: the
    node and edge axes are dynamic.

    Raises:
        TypeError: ``model`` is not a Keras model with a GraphTensor input.
        ValueError: the input graph is not one node set + one edge set with a single node feature.
    """
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or not isinstance(
            getattr(model.inputs[0], "spec", None), tfgnn.GraphTensorSpec):
        raise TypeError("`model` must be a Keras model with one tfgnn.GraphTensor input (built with "
                        f"`keras.Input(type_spec=graph_spec)`). Received: model={model!r}")
    spec = model.inputs[0].spec
    node_set_name, edge_set_name, feature_name, feature_spec = _homogeneous_names(spec)
    index_dtype = spec.indices_dtype
    features = keras.Input(shape=feature_spec.shape[1:], dtype=feature_spec.dtype, name="node_features")
    source = keras.Input(shape=(), dtype=index_dtype, name="source")
    target = keras.Input(shape=(), dtype=index_dtype, name="target")
    graph = _BuildGraph(node_set_name, edge_set_name, feature_name, name="build_graph")([features, source, target])
    return keras.Model([features, source, target], model(graph), name=f"{model.name}_plain")


def convert_graph_model(model: keras.Model, *, integer_aggregation: bool = True) -> bytes:
    """Converts a Degree-Quant model (GraphTensor or plain-tensor input) to an INT8 TFLite flatbuffer.

    Args:
        model: the trained model (``mode="dq"`` or ``"qat"``; a ``"float"`` model converts to a float file).
        integer_aggregation: replace the float aggregations and degree normalisations the converter leaves
            by the integer custom ops of ``tflite_export.graph_ops`` (see the module docstring). False gives the
            converter's file: builtin ops only, aggregation in float.

    Inputs and outputs stay float32 / int32.

    Raises:
        TypeError: ``model`` is not a Keras model, or ``integer_aggregation`` is not a bool.
        RuntimeError: the converter failed (its message is included).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras model. Received: model={model!r}")
    if not isinstance(integer_aggregation, bool):
        raise TypeError(f"`integer_aggregation` must be True or False. Received: "
                        f"integer_aggregation={integer_aggregation!r}")
    if isinstance(getattr(model.inputs[0], "spec", None), tfgnn.GraphTensorSpec):
        model = plain_tensor_model(model)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises several unrelated types
        raise RuntimeError(f"The TFLite converter failed for model {model.name!r}: {exc}") from exc
    if integer_aggregation:
        flatbuffer, _ = graph_ops.integer_aggregation(flatbuffer)
    return flatbuffer


def _registerers(content: bytes) -> list | None:
    """The graph ops' registerer (kernels built on first use) for a file that has them, else None."""
    if not graph_ops.uses_graph_ops(content):
        return None
    from tflite_export import kernels

    return [kernels.graph_registerer()]


class GraphInterpreter:
    """Runs an exported graph model on one graph at a time, resizing inputs per graph.

    A file with the integer graph ops (``convert_graph_model(..., integer_aggregation=True)``) runs on
    TensorFlow's interpreter with the ops' kernels registered (built on first use); any other file on
    ai-edge-litert. Both apply XNNPACK to the ops it supports.

    Example::

        runner = GraphInterpreter(flatbuffer)
        logits = runner(node_features, source, target)
    """

    _ROLES = ("node_features", "source", "target")

    def __init__(self, flatbuffer: bytes, num_threads: int = 1):
        content = check_flatbuffer(flatbuffer, "flatbuffer")
        graph_ops.check_dataflow(content, "flatbuffer")
        # Inputs are resized per graph before the first allocation.
        self.interpreter = make_interpreter(content, num_threads=num_threads, allocate=False,
                                            custom_op_registerers=_registerers(content))
        self._inputs = {}
        for detail in self.interpreter.get_input_details():
            role = [r for r in self._ROLES if r in detail["name"]]
            if len(role) != 1:
                raise ValueError(f"`flatbuffer` is not a plain-tensor graph model: input {detail['name']!r} is "
                                 f"none of {self._ROLES}.")
            self._inputs[role[0]] = detail
        if set(self._inputs) != set(self._ROLES):
            raise ValueError(f"`flatbuffer` must have the inputs {self._ROLES}. Received: {sorted(self._inputs)}")
        self._shapes = None

    def __call__(self, node_features, source, target) -> np.ndarray:
        values = {"node_features": np.asarray(node_features), "source": np.asarray(source),
                  "target": np.asarray(target)}
        shapes = {k: v.shape for k, v in values.items()}
        if shapes != self._shapes:
            for role, detail in self._inputs.items():
                self.interpreter.resize_tensor_input(detail["index"], shapes[role])
            self.interpreter.allocate_tensors()
            self._shapes = shapes
        for role, detail in self._inputs.items():
            self.interpreter.set_tensor(detail["index"], values[role].astype(detail["dtype"]))
        try:
            self.interpreter.invoke()
        except RuntimeError as exc:  # e.g. a graph op refusing an edge index outside the graph
            raise ValueError(f"The graph model could not run on this graph: {' '.join(str(exc).split())}") from exc
        return self.interpreter.get_tensor(self.interpreter.get_output_details()[0]["index"]).copy()


def float_ops(flatbuffer: bytes) -> dict:
    """Op name -> ``{"int8": n, "float32": m, ...}`` by the dtype of each node's first output."""
    content = check_flatbuffer(flatbuffer, "flatbuffer")
    graph = load_static_graph(content, custom_op_registerers=_registerers(content))
    histogram: dict = collections.defaultdict(collections.Counter)
    for op in graph.ops:
        histogram[op["op_name"]][dtype_name(graph.tensors[op["outputs"][0]]["dtype"])] += 1
    return {name: dict(counts) for name, counts in sorted(histogram.items())}
