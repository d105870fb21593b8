"""Degree-Quant graph convolutions on tf-gnn's ``AnyToAnyConvolutionBase`` (its ``convolve`` hook).

Both layers quantize every tensor of the convolution: the node inputs, the weights (always low-bit), the
messages, the aggregates and the update outputs. In training, each node is protected with probability
``p_min + (p_max - p_min) * CDF(in-degree)`` over its own graph; a protected node's inputs, the messages it
sends, its aggregate and its outputs stay in full precision and stay out of the range statistics. Messages are
quantized where they are computed, on the sender's node, before tf-gnn broadcasts them onto edges: the
broadcast is a gather that copies int8 codes exactly (TFLite's int8 GATHER demands the same scale on both
sides). One
Bernoulli draw is made per layer and step (the reference draws once per forward pass and reuses it across
layers; the marginal protection probability of every quantization site is the same). At inference nothing is
masked and the layers are deterministic.

``mode="qat"`` is the plain-QAT baseline on the same layers (min/max EMA ranges, no masking) and
``mode="float"`` the FP32 reference (no quantization), so the three arms of a comparison share one model code.

Use them like tf-gnn's own convolutions, inside ``tfgnn.keras.layers.NodeSetUpdate`` with
``SingleInputNextState`` (the convolution computes the whole update)::

    tfgnn.keras.layers.NodeSetUpdate(
        {"edges": DegreeQuantGIN(64, num_bits=4)},
        next_state=tfgnn.keras.layers.SingleInputNextState())

References: Tailor, Fernandez-Marques, Lane, "Degree-Quant", ICLR 2021, arXiv 2008.05000; Kipf & Welling,
arXiv 1609.02907 (GCN); Xu et al., arXiv 1810.00826 (GIN).
"""

from __future__ import annotations

import tensorflow_gnn as tfgnn

from tfq_ext._compat import resolve_training, smart_cond
from tfq_ext._keras import keras, tf
from tfq_ext.degree_quant.quantizer import QuantDense, activation_quantizer, check_settings
from tfq_ext.ops.degree import protection_probability, sample_protection

__all__ = ["DegreeQuantGCN", "DegreeQuantGIN", "in_degree"]


def in_degree(graph: tfgnn.GraphTensor, edge_set_name: str, receiver_tag=tfgnn.TARGET) -> tf.Tensor:
    """Number of edges of ``edge_set_name`` arriving at each receiver node, float32 ``[num_nodes]``."""
    edge_set = graph.edge_sets[edge_set_name]
    ones = tf.ones([edge_set.total_size], tf.float32)
    return tfgnn.pool_edges_to_node(graph, edge_set_name, receiver_tag, "sum", feature_value=ones)


def _component_ids(node_set) -> tf.Tensor:
    sizes = tf.cast(node_set.sizes, tf.int32)
    return tf.repeat(tf.range(tf.size(sizes)), sizes)


class _DegreeQuantConv(tfgnn.keras.layers.AnyToAnyConvolutionBase):
    """Shared part: argument checks, in-degrees and the protection mask for ``convolve``."""

    # Whether ``convolve`` reads the in-degrees itself (GCN's normalisation); otherwise they are computed only
    # for the protection mask.
    _uses_degree = False

    def __init__(self, units: int, *, num_bits: int = 8, mode: str = "dq", p_min: float | None = None,
                 p_max: float | None = None, percentile: float | None = None, ema_decay: float = 0.99,
                 activation="relu", quantize_input: bool = True, receiver_tag=tfgnn.TARGET, **kwargs):
        if receiver_tag not in (tfgnn.SOURCE, tfgnn.TARGET):
            raise ValueError(f"`receiver_tag` must be tfgnn.SOURCE ({tfgnn.SOURCE}) or tfgnn.TARGET "
                             f"({tfgnn.TARGET}): Degree-Quant protects receiver nodes. "
                             f"Received: receiver_tag={receiver_tag!r}")
        super().__init__(receiver_tag=receiver_tag, **kwargs)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"`units` must be a positive int. Received: units={units!r}")
        self.settings = check_settings(mode, num_bits, p_min, p_max, percentile, ema_decay)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.quantize_input = bool(quantize_input)
        self._protected = None
        self._degree = None

    def _dense(self, units, activation, name, **kwargs):
        s = self.settings
        return QuantDense(units, activation, mode=s["mode"], num_bits=s["num_bits"], percentile=s["percentile"],
                          ema_decay=s["ema_decay"], name=name, **kwargs)

    def _quantizer(self, name):
        return activation_quantizer(self.settings, name)

    def _input(self, x, protected, training):
        return self.input_quantizer(x, protected, training=training) if self.quantize_input else x

    def call(self, graph, *, edge_set_name=None, node_set_name=None, receiver_tag=None, training=None):
        if not isinstance(graph, tfgnn.GraphTensor):
            raise TypeError(f"{type(self).__name__} must be called on a tfgnn.GraphTensor. "
                            f"Received: {type(graph).__name__}")
        if edge_set_name not in graph.edge_sets:
            raise ValueError(f"{type(self).__name__} ({self.name}) needs edge set `edge_set_name`="
                             f"{edge_set_name!r}, which the graph does not have; it has edge sets "
                             f"{sorted(graph.edge_sets)}.")
        adjacency = graph.edge_sets[edge_set_name].adjacency
        tag = self._receiver_tag
        receiver = adjacency.node_set_name(tag)
        if adjacency.node_set_name(tfgnn.reverse_tag(tag)) != receiver:
            raise ValueError(f"{type(self).__name__} needs an edge set between nodes of one node set; edge set "
                             f"{edge_set_name!r} connects {adjacency.source_name!r} -> {adjacency.target_name!r}.")
        training = resolve_training(training)
        static_training = training if isinstance(training, bool) else tf.get_static_value(training)
        # Inference known at trace time (evaluate, predict, the exported graph) needs no mask and, for GIN, no
        # degrees: nothing of the protection reaches the TFLite file.
        protect = (self.settings["mode"] == "dq" and self.settings["p_max"] > 0.0
                   and (static_training is None or bool(static_training)))
        if protect or self._uses_degree:
            self._degree = in_degree(graph, edge_set_name, tag)
        if protect:
            degree, nodes = self._degree, graph.node_sets[receiver]
            self._protected = smart_cond(
                training,
                lambda: sample_protection(protection_probability(
                    degree, _component_ids(nodes), self.settings["p_min"], self.settings["p_max"])),
                lambda: tf.zeros(tf.shape(degree), tf.bool))
        try:
            return super().call(graph, edge_set_name=edge_set_name, receiver_tag=receiver_tag, training=training)
        finally:
            self._protected = None
            self._degree = None

    def get_config(self):
        s = self.settings
        return dict(super().get_config(), units=self.units, num_bits=s["num_bits"], mode=s["mode"],
                    p_min=s["p_min"], p_max=s["p_max"], percentile=s["percentile"], ema_decay=s["ema_decay"],
                    activation=keras.activations.serialize(self.activation), quantize_input=self.quantize_input)


@keras.utils.register_keras_serializable(package="tfq_ext")
class DegreeQuantGCN(_DegreeQuantConv):
    """GCN convolution (Kipf & Welling) with Degree-Quant: ``act(D^-1/2 (A + I) D^-1/2 X W + b)``.

    Degrees are the in-degrees over the edge set (plus one for the self loop), so a symmetric edge set (both
    directions stored, as tf-gnn expects for GCN) gives the paper's normalisation.

    Args:
        units: output features per node.
        num_bits: 8 or 4.
        mode: ``"dq"`` (Degree-Quant), ``"qat"`` (plain QAT: min/max ranges, no protection) or ``"float"``.
        p_min, p_max: protection probability range (default: INT8 [0, 0.1], INT4 [0.1, 0.2]).
        percentile: percentile cut for the ranges in % (default: INT8 0.1, INT4 1.0).
        ema_decay: range moving-average decay.
        activation: applied to the update before its output quantizer.
        quantize_input: quantize the input node states. Set False when they are the output of another
            Degree-Quant layer (already on its int8 grid): two fake-quant ops in a row with slightly different
            ranges make the TFLite converter reject the following int8 GATHER ("same scale constraint").
        add_self_loops: include each node's own features (the paper's A + I).
        receiver_tag: ``tfgnn.TARGET`` (default) or ``tfgnn.SOURCE``.
    """

    _uses_degree = True

    def __init__(self, units: int, *, add_self_loops: bool = True, **kwargs):
        super().__init__(units, **kwargs)
        self.add_self_loops = bool(add_self_loops)
        self.input_quantizer = self._quantizer("input_quant")
        self.transform = self._dense(units, None, "transform")
        self.message_quantizer = self._quantizer("message_quant")
        self.aggregate_quantizer = self._quantizer("aggregate_quant")
        self.output_quantizer = self._quantizer("output_quant")

    def build(self, input_shape):
        self.bias = self.add_weight("bias", shape=(self.units,), initializer="zeros")
        super().build(input_shape)

    def convolve(self, *, sender_node_input, sender_edge_input, receiver_input, broadcast_from_sender_node,
                 broadcast_from_receiver, pool_to_receiver, training):
        protected = self._protected
        degree = self._degree + (1.0 if self.add_self_loops else 0.0)
        norm = tf.math.rsqrt(tf.maximum(degree, 1.0))[:, tf.newaxis]
        x = self._input(sender_node_input, protected, training)
        # X W before propagation (as the reference does): messages then carry `units` features, and the
        # transform is one fully-connected op on nodes rather than one per edge.
        xw = self.transform(x, protected, training=training)
        # Messages are quantized on the sender side, before the broadcast: a gather copies int8 codes exactly,
        # and TFLite's int8 GATHER requires its output to keep its input's scale anyway.
        scaled = self.message_quantizer(xw * norm, protected, training=training)
        aggregate = pool_to_receiver(broadcast_from_sender_node(scaled), reduce_type="sum")
        if self.add_self_loops:
            aggregate = aggregate + scaled
        aggregate = self.aggregate_quantizer(aggregate * norm, protected, training=training)
        return self.output_quantizer(self.activation(aggregate + self.bias), protected, training=training)

    def get_config(self):
        return dict(super().get_config(), add_self_loops=self.add_self_loops)


@keras.utils.register_keras_serializable(package="tfq_ext")
class DegreeQuantGIN(_DegreeQuantConv):
    """GIN convolution (Xu et al.) with Degree-Quant: ``MLP((1 + eps) x_v + sum_{u -> v} x_u)``.

    Sum aggregation is where plain QAT breaks: a node with a thousand neighbours has an aggregate a thousand
    times larger than a leaf's. The MLP is two quantized dense layers (hidden ReLU, then ``activation``).

    Args:
        units: output (and hidden) features per node.
        epsilon: the fixed ``eps`` of GIN-0 (default 0).
        batch_norm: batch normalization after each MLP matmul, as in the GIN paper and the Degree-Quant
            reference (Dense-BN-ReLU-Dense-BN-activation). It keeps the states of a dense graph from growing by
            the in-degree at every layer. Folded into the quantized kernels (Jacob et al.), so the exported MLP
            is still two int8 fully-connected ops.
        bn_momentum: moving-statistics momentum of those batch normalizations. With one full-graph batch per
            step (node classification), 0.99 leaves the start-up statistics in the moving averages for
            hundreds of steps; 0.9 follows within tens.
        freeze_bn_delay: training steps after which the batch normalizations use (and stop updating) their
            moving statistics, as Jacob et al. do before the end of QAT; training then computes exactly what
            inference computes. Needed when the weights still move quickly at the end of training (with one
            full-graph batch per step, batch statistics drift away from the lagging moving averages).
        Other arguments as :class:`DegreeQuantGCN`.
    """

    def __init__(self, units: int, *, epsilon: float = 0.0, batch_norm: bool = False, bn_momentum: float = 0.99,
                 freeze_bn_delay: int | None = None, **kwargs):
        super().__init__(units, **kwargs)
        self.epsilon = float(epsilon)
        bn = dict(batch_norm=batch_norm, bn_momentum=bn_momentum, freeze_bn_delay=freeze_bn_delay)
        self.input_quantizer = self._quantizer("input_quant")
        self.aggregate_quantizer = self._quantizer("aggregate_quant")
        self.combined_quantizer = self._quantizer("combined_quant")
        self.hidden = self._dense(units, "relu", "mlp_hidden", **bn)
        self.out = self._dense(units, self.activation, "mlp_out", **bn)

    def convolve(self, *, sender_node_input, sender_edge_input, receiver_input, broadcast_from_sender_node,
                 broadcast_from_receiver, pool_to_receiver, training):
        protected = self._protected
        x = self._input(sender_node_input, protected, training)
        # GIN's message is the sender's (already quantized) state; the gather copies its int8 codes exactly.
        aggregate = self.aggregate_quantizer(pool_to_receiver(broadcast_from_sender_node(x), reduce_type="sum"),
                                             protected, training=training)
        combined = self.combined_quantizer((1.0 + self.epsilon) * x + aggregate, protected, training=training)
        return self.out(self.hidden(combined, protected, training=training), protected, training=training)

    def get_config(self):
        # The batch-norm settings live (validated) in the MLP's dense layers.
        return dict(super().get_config(), epsilon=self.epsilon, batch_norm=self.hidden.batch_norm,
                    bn_momentum=self.hidden.bn_momentum, freeze_bn_delay=self.hidden.freeze_bn_delay)
