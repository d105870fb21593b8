"""GraphTensor inputs from ``tfq_ext.graph_data`` and ready-made Degree-Quant GNNs (GCN / GIN stacks).

``build_gnn`` stacks Degree-Quant convolutions the tf-gnn way (``GraphUpdate`` -> ``NodeSetUpdate`` with
``SingleInputNextState``) and adds a head: per-node logits for node classification, or mean pooling to the
graph context and a quantized dense layer for graph classification. ``mode`` switches the same architecture
between FP32, plain QAT and Degree-Quant, which is how the benchmark compares them.
"""

from __future__ import annotations

import numpy as np
import tensorflow_gnn as tfgnn

from tfq_ext._keras import keras, tf
from tfq_ext.degree_quant.layers import DegreeQuantGCN, DegreeQuantGIN
from tfq_ext.degree_quant.quantizer import QuantDense

__all__ = ["NODES", "EDGES", "FEATURE", "graph_tensor", "molecule_dataset", "node_dataset", "build_gnn"]

NODES, EDGES, FEATURE = "nodes", "edges", tfgnn.HIDDEN_STATE
CONVOLUTIONS = {"gcn": DegreeQuantGCN, "gin": DegreeQuantGIN}


def graph_tensor(features, edges) -> tfgnn.GraphTensor:
    """One homogeneous graph (node set ``"nodes"``, edge set ``"edges"``) from ``[N, F]`` features and
    ``[2, E]`` source/target indices."""
    features = np.asarray(features, np.float32)
    edges = np.asarray(edges)
    if features.ndim != 2:
        raise ValueError(f"`features` must have shape [num_nodes, F]. Received shape {features.shape}")
    if edges.ndim != 2 or edges.shape[0] != 2:
        raise ValueError(f"`edges` must have shape [2, num_edges] (source row, target row). "
                         f"Received shape {edges.shape}")
    if edges.size and (edges.min() < 0 or edges.max() >= features.shape[0]):
        raise ValueError(f"`edges` must index nodes 0..{features.shape[0] - 1}. "
                         f"Received indices in [{edges.min()}, {edges.max()}]")
    edges = edges.astype(np.int32)
    return tfgnn.GraphTensor.from_pieces(
        node_sets={NODES: tfgnn.NodeSet.from_fields(sizes=[features.shape[0]], features={FEATURE: features})},
        edge_sets={EDGES: tfgnn.EdgeSet.from_fields(
            sizes=[edges.shape[1]], adjacency=tfgnn.Adjacency.from_indices((NODES, edges[0]), (NODES, edges[1])))})


def molecule_dataset(molecules, batch_size: int = 64, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """(GraphTensor, label) batches for graph classification; each batch is merged into one graph whose
    components are the molecules (tf-gnn's convention)."""
    if not molecules:
        raise ValueError("`molecules` is empty.")
    # Ragged rows built once and GraphTensors built inside the pipeline: constructing a thousand GraphTensors
    # eagerly in Python takes tens of seconds.
    features = tf.RaggedTensor.from_row_lengths(
        np.concatenate([np.asarray(m.node_features, np.float32) for m in molecules]),
        [len(m.node_features) for m in molecules])
    edges = tf.RaggedTensor.from_row_lengths(
        np.concatenate([np.asarray(m.edges, np.int32).T for m in molecules]), [m.edges.shape[1] for m in molecules])
    labels = np.array([m.label for m in molecules], np.int32)

    def to_graph(x, e, y):
        graph = tfgnn.GraphTensor.from_pieces(
            node_sets={NODES: tfgnn.NodeSet.from_fields(sizes=tf.shape(x)[:1], features={FEATURE: x})},
            edge_sets={EDGES: tfgnn.EdgeSet.from_fields(
                sizes=tf.shape(e)[:1], adjacency=tfgnn.Adjacency.from_indices((NODES, e[:, 0]), (NODES, e[:, 1])))})
        return graph, y

    ds = tf.data.Dataset.from_tensor_slices((features, edges, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(molecules), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.map(to_graph)
    return ds.batch(batch_size).map(lambda g, y: (g.merge_batch_to_components(), y)).prefetch(2)


def node_dataset(graph, mask) -> tf.data.Dataset:
    """One-element dataset ``(GraphTensor, labels, weights)`` for full-graph node classification; the loss
    only counts nodes where ``mask`` is True."""
    tensor = graph_tensor(graph.features, graph.edges)
    weights = np.asarray(mask, np.float32)
    return tf.data.Dataset.from_tensors((tensor, np.asarray(graph.labels, np.int32), weights))


def build_gnn(graph_spec: tfgnn.GraphTensorSpec, num_classes: int, *, conv: str = "gin", units: int = 64,
              num_layers: int = 3, task: str = "graph", mode: str = "dq", num_bits: int = 8,
              head_ema_decay: float | None = None, **dq_kwargs) -> keras.Model:
    """A stack of Degree-Quant convolutions with a classification head.

    Args:
        graph_spec: spec of the input graphs (``dataset.element_spec[0]``).
        num_classes: logits per node (``task="node"``) or per graph (``task="graph"``).
        conv: ``"gcn"`` or ``"gin"``.
        units, num_layers: width and depth.
        mode, num_bits, **dq_kwargs: see :class:`~tfq_ext.degree_quant.DegreeQuantGCN` (and, for GIN,
            ``batch_norm``, ``bn_momentum``, ``freeze_bn_delay`` of :class:`~tfq_ext.degree_quant.DegreeQuantGIN`).
        head_ema_decay: range moving-average decay of the head's quantizers, the logits' above all (default:
            ``ema_decay``). The logit range grows as training sharpens predictions; with a short budget (a few
            hundred full-graph steps) a slowly moving range clips the logits, and the clipped straight-through
            estimator then passes no gradient to exactly the logits that must grow (measured on the fly
            connectome: INT8 GCN at 80-81% train accuracy with 0.99, 89-91% with 0.5 or an unquantized head).
    """
    if conv not in CONVOLUTIONS:
        raise ValueError(f"`conv` must be one of {sorted(CONVOLUTIONS)}. Received: conv={conv!r}")
    if task not in ("graph", "node"):
        raise ValueError(f"`task` must be 'graph' or 'node'. Received: task={task!r}")
    inputs = keras.Input(type_spec=graph_spec)
    graph = inputs
    for i in range(num_layers):
        layer = CONVOLUTIONS[conv](units, mode=mode, num_bits=num_bits, quantize_input=i == 0, name=f"{conv}_{i}",
                                   **dq_kwargs)
        graph = tfgnn.keras.layers.GraphUpdate(node_sets={NODES: tfgnn.keras.layers.NodeSetUpdate(
            {EDGES: layer}, next_state=tfgnn.keras.layers.SingleInputNextState())})(graph)
    if task == "graph":
        states = tfgnn.keras.layers.Pool(tfgnn.CONTEXT, "mean", node_set_name=NODES)(graph)
    else:
        states = graph.node_sets[NODES][FEATURE]
    # The head shares the convolutions' range settings (protection does not apply to it).
    ema_decay = dq_kwargs.get("ema_decay", 0.99)
    logits = QuantDense(num_classes, mode=mode, num_bits=num_bits, percentile=dq_kwargs.get("percentile"),
                        ema_decay=ema_decay if head_ema_decay is None else head_ema_decay,
                        quantize_input=task == "graph", name="head")(states)
    return keras.Model(inputs, logits, name=f"{conv}_{mode}_int{num_bits}")
