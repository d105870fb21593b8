"""Degree-Quant on tf-gnn: protection masks, masked ranges, layers in model.fit, save/load, TFLite, errors."""

import numpy as np
import pytest
import tensorflow_gnn as tfgnn

from tfq_ext import graph_data
from tfq_ext._keras import keras, tf
from tfq_ext.degree_quant import (DegreeQuantGCN, DegreeQuantGIN, GraphInterpreter, MaskedRangeQuantizer,
                                  convert_graph_model, float_ops, in_degree, plain_tensor_model)
from tfq_ext.degree_quant.quantizer import QuantDense
from tfq_ext.degree_quant.models import EDGES, NODES, build_gnn, graph_tensor, molecule_dataset, node_dataset
from tfq_ext.ops.degree import degree_cdf, protection_probability, sample_protection
from tfq_ext.ops.fake_quant import nudged_scale_zero_point
from tfq_ext.ops.ranges import percentile_min_max


def _ring(n=6, feature_dim=3, seed=0):
    rng = np.random.default_rng(seed)
    src = np.arange(n)
    edges = np.stack([np.concatenate([src, (src + 1) % n]), np.concatenate([(src + 1) % n, src])])
    return graph_tensor(rng.normal(size=(n, feature_dim)).astype("float32"), edges)


def _star(leaves=9, feature_dim=3):
    """Node 0 receives an edge from every leaf; leaves receive one edge from node 0."""
    leaf = np.arange(1, leaves + 1)
    edges = np.stack([np.concatenate([leaf, np.zeros(leaves, int)]), np.concatenate([np.zeros(leaves, int), leaf])])
    return graph_tensor(np.ones((leaves + 1, feature_dim), "float32"), edges)


# --- protection probability ------------------------------------------------------------------------------

def test_degree_cdf_golden_per_component():
    degree = tf.constant([0.0, 1.0, 1.0, 3.0, 5.0, 2.0])
    components = tf.constant([0, 0, 0, 0, 1, 1])
    # Component 0: degrees {0, 1, 1, 3} -> CDF 1/4, 3/4, 3/4, 4/4; component 1: {5, 2} -> 2/2, 1/2.
    np.testing.assert_allclose(degree_cdf(degree, components).numpy(), [0.25, 0.75, 0.75, 1.0, 1.0, 0.5])


def test_protection_probability_spans_p_min_to_p_max():
    degree = tf.constant([0.0, 1.0, 1.0, 3.0])
    p = protection_probability(degree, tf.zeros(4, tf.int32), 0.1, 0.3).numpy()
    np.testing.assert_allclose(p, [0.1 + 0.2 * 0.25, 0.1 + 0.2 * 0.75, 0.1 + 0.2 * 0.75, 0.3], rtol=1e-6)


def test_sampled_protection_frequency_matches_probability():
    probability = tf.constant([0.05, 0.5, 0.95] * 1000)
    draws = np.stack([sample_protection(probability).numpy() for _ in range(40)]).reshape(40, 1000, 3)
    freq = draws.mean(axis=(0, 1))
    # 40000 Bernoulli draws per value: 5 standard deviations is at most 0.0125.
    np.testing.assert_allclose(freq, [0.05, 0.5, 0.95], atol=0.0125)


def test_in_degree_of_star():
    np.testing.assert_array_equal(in_degree(_star(4), EDGES).numpy(), [4, 1, 1, 1, 1])


# --- masked range quantizer --------------------------------------------------------------------------------

def test_percentile_top_k_matches_sort():
    x = tf.random.stateless_normal([3001], seed=[1, 2])
    for percentile in (0.0, 0.1, 1.0, 10.0):
        lo, hi = percentile_min_max(x, percentile)
        flat = np.sort(x.numpy())
        last = len(flat) - 1
        ref_lo = min(flat[int(np.round(last * percentile / 100))], 0.0)
        ref_hi = max(flat[int(np.round(last * (1 - percentile / 100)))], 0.0)
        assert (float(lo), float(hi)) == (pytest.approx(ref_lo), pytest.approx(ref_hi))


def test_percentile_tracker_golden_ema():
    q = MaskedRangeQuantizer(num_bits=8, range_mode="percentile", percentile=1.0, ema_decay=0.9)
    x1 = tf.reshape(tf.range(-500.0, 501.0), [1001, 1])
    q(x1, training=True)
    # First batch sets the range: 1st / 99th percentiles of -500..500 are -490 / 490.
    assert (float(q.min_var), float(q.max_var)) == (-490.0, 490.0)
    q(x1 * 2.0, training=True)
    assert float(q.max_var) == pytest.approx(0.9 * 490.0 + 0.1 * 980.0)
    assert float(q.min_var) == pytest.approx(0.9 * -490.0 + 0.1 * -980.0)


def test_protected_rows_do_not_move_the_range_and_pass_unquantized():
    q = MaskedRangeQuantizer(num_bits=8, range_mode="minmax")
    x = tf.constant([[0.5, -1.0], [1.0, 0.25], [1000.0, -2000.0]])
    protected = tf.constant([False, False, True])
    y = q(x, protected, training=True)
    assert (float(q.min_var), float(q.max_var)) == (-1.0, 1.0)
    np.testing.assert_array_equal(y[2].numpy(), [1000.0, -2000.0])
    scale, _ = nudged_scale_zero_point(-1.0, 1.0, 8)
    np.testing.assert_allclose(y[:2].numpy(), x[:2].numpy(), atol=scale / 2 + 1e-6)


def test_all_rows_protected_keeps_range():
    q = MaskedRangeQuantizer(num_bits=8, range_mode="minmax")
    q(tf.constant([[1.0], [-1.0]]), training=True)
    q(tf.constant([[50.0], [-50.0]]), tf.constant([True, True]), training=True)
    assert (float(q.min_var), float(q.max_var)) == (-1.0, 1.0)


def test_int4_grid_at_inference():
    q = MaskedRangeQuantizer(num_bits=4, range_mode="minmax")
    x = tf.random.stateless_uniform([500, 4], seed=[3, 4], minval=-3.0, maxval=5.0)
    q(x, training=True)
    y = q(x, training=False).numpy()
    scale, zero_point = nudged_scale_zero_point(float(q.min_var), float(q.max_var), 4)
    codes = y / scale + zero_point
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert len(np.unique(np.round(codes))) <= 16


# --- layers ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("conv", [DegreeQuantGCN, DegreeQuantGIN], ids=["gcn", "gin"])
def test_inference_is_deterministic_and_training_is_masked(conv):
    graph = _star(40)
    keras.utils.set_random_seed(0)
    # No final ReLU: a ReLU output of exactly 0 would sit on the grid whether protected or not.
    layer = conv(8, num_bits=4, mode="dq", p_min=0.5, p_max=1.0, activation=None)
    layer(graph, edge_set_name=EDGES, training=True)
    a = layer(graph, edge_set_name=EDGES, training=False).numpy()
    b = layer(graph, edge_set_name=EDGES, training=False).numpy()
    np.testing.assert_array_equal(a, b)
    # With p in [0.5, 1] the hub (highest in-degree) is always protected in training: its output is the
    # full-precision one, not on the output quantizer's 16-level grid.
    outs = [layer(graph, edge_set_name=EDGES, training=True).numpy()[0] for _ in range(3)]
    q = layer.output_quantizer if conv is DegreeQuantGCN else layer.out.output_quantizer
    scale, zero_point = nudged_scale_zero_point(float(q.min_var), float(q.max_var), 4)
    codes = outs[0] / scale + zero_point
    assert np.abs(codes - np.round(codes)).max() > 1e-3


def test_hub_does_not_stretch_aggregate_range_with_protection():
    """The star's hub aggregate is 40x a leaf's: plain QAT's range follows it, Degree-Quant's (p_max=1 for the
    top-degree node, p_min=0) does not."""
    graph = _star(40)
    ranges = {}
    for mode in ("qat", "dq"):
        keras.utils.set_random_seed(0)
        layer = DegreeQuantGIN(4, num_bits=8, mode=mode, p_min=0.0, p_max=1.0, percentile=0.0, activation=None)
        layer(graph, edge_set_name=EDGES, training=True)
        ranges[mode] = float(layer.aggregate_quantizer.max_var)
    # Every leaf sends 1.0 per feature: the hub's aggregate is 40, a leaf's is 1.
    assert ranges["qat"] == pytest.approx(40.0)
    assert ranges["dq"] <= 1.0


def test_float_mode_matches_unquantized_gcn_math():
    graph = _ring(5)
    layer = DegreeQuantGCN(2, mode="float", activation=None)
    out = layer(graph, edge_set_name=EDGES).numpy()
    x = graph.node_sets[NODES]["hidden_state"].numpy()
    adjacency = np.eye(5)
    for s, t in zip(*[graph.edge_sets[EDGES].adjacency[tag].numpy() for tag in (tfgnn.SOURCE, tfgnn.TARGET)]):
        adjacency[t, s] += 1
    norm = 1 / np.sqrt(adjacency.sum(1))
    expected = (norm[:, None] * adjacency * norm[None, :]) @ x @ layer.transform.kernel.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _molecules(n=32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = int(rng.integers(4, 12))
        chain = np.arange(size - 1)
        edges = np.stack([np.concatenate([chain, chain + 1]), np.concatenate([chain + 1, chain])])
        label = int(rng.integers(0, 2))
        features = rng.normal(size=(size, 5)).astype("float32") + label
        out.append(graph_data.MoleculeGraph(name=f"m{len(out)}", node_features=features, edges=edges.astype("int32"),
                                            bond_orders=np.ones(edges.shape[1], "int32"), label=label,
                                            properties={}))
    return out


@pytest.mark.parametrize("conv", ["gcn", "gin"])
def test_graph_classification_fit_save_load_and_tflite(conv, tmp_path):
    molecules = _molecules()
    train = molecule_dataset(molecules, 16, shuffle_seed=0)
    keras.utils.set_random_seed(0)
    model = build_gnn(train.element_spec[0], 2, conv=conv, units=16, num_layers=2, mode="dq", num_bits=8)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(train, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    if conv == "gin":  # saving a tf-gnn model is slow; one convolution type covers the registration
        test = molecule_dataset(molecules[:8], 8)
        before = model.predict(test, verbose=0)
        model.save(tmp_path / "saved", save_format="tf")
        restored = keras.models.load_model(tmp_path / "saved")
        np.testing.assert_allclose(restored.predict(test, verbose=0), before, atol=1e-5)

    _assert_tflite_agrees(model, convert_graph_model(model), molecules[:4])


def _assert_tflite_agrees(model, flatbuffer, molecules):
    """ai-edge-litert's logits within 2 output steps of the Keras model's (integer kernels round differently
    from float fake quantization)."""
    runner, plain = GraphInterpreter(flatbuffer), plain_tensor_model(model)
    head = model.get_layer("head").output_quantizer
    step = (float(head.max_var) - float(head.min_var)) / 255
    for m in molecules:
        args = (m.node_features, m.edges[0], m.edges[1])
        reference = plain([tf.constant(a) for a in args], training=False).numpy()
        np.testing.assert_allclose(runner(*args), reference, atol=2 * step + 1e-6)


def test_node_classification_on_one_graph():
    graph = graph_data.power_law_graph(num_nodes=200, seed=1)
    train_mask, _ = graph_data.train_test_masks(graph.num_nodes, 0.3, seed=0, labels=graph.labels)
    ds = node_dataset(graph, train_mask)
    keras.utils.set_random_seed(0)
    model = build_gnn(ds.element_spec[0], 4, conv="gcn", task="node", units=16, num_layers=2, mode="dq",
                      num_bits=4)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=["accuracy"])
    history = model.fit(ds, epochs=20, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] - 0.2
    assert model.predict(ds, verbose=0).shape == (200, 4)


# --- batch normalization in the GIN MLP --------------------------------------------------------------------

def test_quant_dense_batch_norm_normalises_in_training_and_folds_at_inference():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(3.0, 5.0, size=(64, 6)).astype("float32"))
    layer = QuantDense(4, mode="float", batch_norm=True, bn_momentum=0.0)
    y = layer(x, training=True).numpy()
    # Training: the batch's own statistics (gamma 1, beta 0 at init).
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-2)
    # Momentum 0: the moving statistics are that batch's, so inference (one matmul with the folded kernel and
    # bias) reproduces the training output.
    np.testing.assert_allclose(layer(x, training=False).numpy(), y, atol=1e-3)
    folded = layer.folded
    np.testing.assert_allclose(x.numpy() @ folded.folded_kernel().numpy() + folded.folded_bias().numpy(), y,
                               atol=1e-3)


def test_quant_dense_batch_norm_quantizes_the_folded_kernel():
    x = tf.constant(np.random.default_rng(1).normal(size=(32, 5)).astype("float32"))
    layer = QuantDense(3, mode="qat", num_bits=4, batch_norm=True)
    layer(x, training=True)
    folded = layer.folded.folded_kernel().numpy()
    # At inference the matmul uses the 4-bit symmetric per-tensor grid of the folded kernel (15 levels).
    step = np.abs(folded).max() / 7
    used = layer.folded.weight_quantizer.quantize(tf.constant(folded)).numpy()
    np.testing.assert_allclose(used / step, np.round(used / step), atol=1e-4)
    assert not np.allclose(used, folded)


def test_gin_batch_norm_freeze_makes_training_equal_inference():
    graph = _star(12, 4)
    gaps = {}
    for freeze in (None, 3):
        keras.utils.set_random_seed(0)
        layer = DegreeQuantGIN(8, mode="qat", batch_norm=True, bn_momentum=0.5, freeze_bn_delay=freeze)
        for _ in range(3):
            layer(graph, edge_set_name=EDGES, training=True)
        # The 4th step: frozen, the batch normalization uses its moving statistics, as inference does.
        train_out = layer(graph, edge_set_name=EDGES, training=True).numpy()
        gaps[freeze] = np.abs(train_out - layer(graph, edge_set_name=EDGES, training=False).numpy()).max()
    assert gaps[3] < 1e-5 < 1e-2 < gaps[None]
    config = layer.get_config()
    assert (config["batch_norm"], config["bn_momentum"], config["freeze_bn_delay"]) == (True, 0.5, 3)


def test_gin_batch_norm_model_saves_and_exports_to_int8_fully_connected(tmp_path):
    molecules = _molecules(24, seed=3)
    train = molecule_dataset(molecules, 8, shuffle_seed=0)
    keras.utils.set_random_seed(0)
    model = build_gnn(train.element_spec[0], 2, conv="gin", units=8, num_layers=2, mode="dq", num_bits=8,
                      batch_norm=True, bn_momentum=0.9, freeze_bn_delay=6)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train, epochs=3, verbose=0)
    test = molecule_dataset(molecules[:8], 8)
    before = model.predict(test, verbose=0)
    model.save(tmp_path / "bn", save_format="tf")  # tf-gnn's input spec is not JSON-serializable (.keras)
    restored = keras.models.load_model(tmp_path / "bn")
    np.testing.assert_allclose(restored.predict(test, verbose=0), before, atol=1e-5)

    flatbuffer = convert_graph_model(model)
    ops = float_ops(flatbuffer)
    # Folded: each MLP matmul (+ BN) is one int8 FULLY_CONNECTED; no float MUL/ADD for the BN survives.
    assert ops["FULLY_CONNECTED"] == {"int8": 5}
    assert "MUL" not in ops and ops.get("ADD", {}).get("float32", 0) == 0
    _assert_tflite_agrees(model, flatbuffer, molecules[:4])


@pytest.mark.parametrize("kwargs, match", [
    ({"bn_momentum": 1.0}, r"`bn_momentum` must be in \[0, 1\). Received: bn_momentum=1.0"),
    ({"freeze_bn_delay": -2}, r"`freeze_bn_delay` must be None or an int >= 0. Received: freeze_bn_delay=-2"),
], ids=["momentum", "freeze"])
def test_bad_batch_norm_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DegreeQuantGIN(8, batch_norm=True, **kwargs)


def test_head_ema_decay_applies_to_the_head_only():
    ds = node_dataset(graph_data.power_law_graph(num_nodes=60, seed=2), np.ones(60, bool))
    model = build_gnn(ds.element_spec[0], 4, conv="gin", task="node", units=8, num_layers=2, mode="qat",
                      ema_decay=0.95, head_ema_decay=0.5, batch_norm=True)
    assert model.get_layer("head").output_quantizer.ema_decay == 0.5
    quantizers = [q for q in model.submodules if isinstance(q, MaskedRangeQuantizer)]
    assert sorted({q.ema_decay for q in quantizers}) == [0.5, 0.95]
    with pytest.raises(ValueError, match=r"`ema_decay` must be in \[0, 1\). Received: ema_decay=1.0"):
        build_gnn(ds.element_spec[0], 4, task="node", units=8, num_layers=1, head_ema_decay=1.0)


# --- errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"num_bits": 6}, r"`num_bits` must be one of \(4, 8\).*num_bits=6"),
    ({"p_min": 0.3, "p_max": 0.1}, r"`p_min` must be <= `p_max`.*p_min=0.3, p_max=0.1"),
    ({"p_max": 1.5}, r"`p_max` must be a probability in \[0, 1\].*p_max=1.5"),
    ({"mode": "int8"}, r"`mode` must be one of.*mode='int8'"),
    ({"percentile": 60}, r"`percentile` must be in \[0, 50\).*percentile=60"),
    ({"receiver_tag": tfgnn.CONTEXT}, r"`receiver_tag` must be tfgnn.SOURCE"),
], ids=["bits", "p_order", "p_range", "mode", "percentile", "context"])
@pytest.mark.parametrize("conv", [DegreeQuantGCN, DegreeQuantGIN], ids=["gcn", "gin"])
def test_bad_arguments(conv, kwargs, match):
    with pytest.raises(ValueError, match=match):
        conv(8, **kwargs)


def test_missing_edge_set_is_named():
    with pytest.raises(ValueError, match=r"edge set `edge_set_name`='bonds'.*has edge sets \['edges'\]"):
        DegreeQuantGIN(4)(_ring(), edge_set_name="bonds")


def test_graph_edges_validated():
    with pytest.raises(ValueError, match=r"`edges` must have shape \[2, num_edges\]"):
        graph_tensor(np.zeros((3, 2)), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match=r"`edges` must index nodes 0..2"):
        graph_tensor(np.zeros((3, 2)), np.array([[0, 1], [1, 7]]))


def test_plain_tensor_model_rejects_non_graph_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="one tfgnn.GraphTensor input"):
        plain_tensor_model(model)
