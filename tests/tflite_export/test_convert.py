import json

import numpy as np
import pytest

from tfq_ext._keras import keras, tf
from tflite_export import ConversionError, ConversionReport, convert, delegation_report, run, verify
from tflite_export._graph import StaticGraph
from tflite_export.convert import MAX_CALIBRATION_SAMPLES, _calibration_samples, is_qat_model
from tflite_export.report import tensor_violations
from tflite_export.runtime import output_quantization

INTEGER_DTYPES = {"int8", "int32"}


def test_ptq_is_integer_only_with_int8_io(ptq_int8):
    report = verify(ptq_int8)
    assert isinstance(report, ConversionReport)
    assert report.integer_only
    assert set(report.dtype_histogram) <= INTEGER_DTYPES
    assert [d["dtype"] for d in report.inputs + report.outputs] == ["int8", "int8"]
    # digits lie in [0, 1]: the calibrated input range maps 0 -> -128 with a step of 1/255
    assert report.inputs[0]["zero_point"] == -128
    assert report.inputs[0]["scale"] == pytest.approx(1 / 255, rel=1e-3)
    assert report.op_histogram == {"CONV_2D": 1, "MAX_POOL_2D": 1, "RESHAPE": 1, "FULLY_CONNECTED": 1}
    assert report.size_bytes == len(ptq_int8)
    assert 0 < report.weight_bytes < report.size_bytes


def test_ptq_float_io_wraps_integer_graph(ptq_float_io):
    report = verify(ptq_float_io, float_io=True)
    assert report.integer_only
    assert [d["dtype"] for d in report.inputs + report.outputs] == ["float32", "float32"]
    assert report.op_histogram["QUANTIZE"] == 1 and report.op_histogram["DEQUANTIZE"] == 1
    assert report.dtype_histogram["float32"] == 2  # exactly the graph input and output
    # XNNPACK takes the QUANTIZE/DEQUANTIZE edges as well
    assert report.fully_delegated
    strict = verify(ptq_float_io, float_io=False)
    assert not strict.integer_only
    assert sorted(d for _, d in strict.float_tensors) == ["float32", "float32"]


def test_xnnpack_delegates_every_conv_and_dense(ptq_int8):
    report = delegation_report(ptq_int8)
    for op in ("CONV_2D", "FULLY_CONNECTED"):
        delegated, total = report["by_op"][op]
        assert delegated == total == 1, op
    assert report["delegated"] == report["nodes"] == 4
    assert report["delegate_partitions"] == 1
    assert report["not_delegated"] == []


def test_ptq_matches_keras(float_model, ptq_int8, digits):
    keras_out = float_model.predict(digits.x_test, verbose=0)
    tflite_out = run(ptq_int8, digits.x_test)
    scale, _ = output_quantization(ptq_int8)
    assert tflite_out.shape == keras_out.shape
    assert np.mean(tflite_out.argmax(1) == keras_out.argmax(1)) >= 0.95
    # average error within one output quantization step (a few outliers go further: ranges are calibrated)
    assert np.mean(np.abs(tflite_out - keras_out)) <= 1.0 * scale


def test_report_to_dict_and_str(ptq_int8):
    report = verify(ptq_int8)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["integer_only"] is True and data["fully_delegated"] is True
    assert data["num_nodes"] == 4 and data["outputs"][0]["dtype"] == "int8"
    text = str(report)
    assert "integer-only" in text and "CONV_2D" in text and "XNNPACK: 4/4" in text


def test_op_without_int8_kernel_raises_conversion_error(cumsum_model, calibration_16):
    with pytest.raises(ConversionError, match="not integer-only") as info:
        convert(cumsum_model, calibration_16)
    report = info.value.report
    assert report.not_delegated == ["CUMSUM"]
    assert {d for _, d in report.float_tensors} == {"float32"}


def test_verify_false_keeps_float_leftovers(cumsum_model, calibration_16):
    flatbuffer = convert(cumsum_model, calibration_16, verify=False)
    report = verify(flatbuffer)
    assert not report.integer_only
    assert len(report.float_tensors) == 2  # DEQUANTIZE output feeding CUMSUM, and CUMSUM's output
    assert report.num_delegated == report.num_nodes - 1


@pytest.fixture(scope="module")
def qat_model(digits):
    import tensorflow_model_optimization as tfmot

    keras.utils.set_random_seed(0)
    base = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model = tfmot.quantization.keras.quantize_model(base)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train[:800], digits.y_train[:800], epochs=2, batch_size=32, verbose=0)
    return model


def test_qat_converts_without_representative_data(qat_model, digits):
    assert is_qat_model(qat_model)
    flatbuffer = convert(qat_model)
    report = verify(flatbuffer)
    assert report.integer_only and report.fully_delegated
    assert [d["dtype"] for d in report.inputs + report.outputs] == ["int8", "int8"]
    agree = run(flatbuffer, digits.x_test).argmax(1) == qat_model.predict(digits.x_test, verbose=0).argmax(1)
    assert agree.mean() >= 0.95


def test_qat_with_representative_data(qat_model, digits):
    report = verify(convert(qat_model, digits.x_train[:100]))
    assert report.integer_only and report.fully_delegated


@pytest.mark.parametrize("build, expected", [
    (lambda q, f: f, False),
    (lambda q, f: q, True),
    (lambda q, f: keras.Sequential([keras.Input((8, 8, 1)), q]), True),
], ids=["float", "tfmot-qat", "nested-qat"])
def test_is_qat_model(build, expected, qat_model, float_model):
    assert is_qat_model(build(qat_model, float_model)) is expected


def _gen_function(x, y=None, name=None):
    def gen():
        for i in range(len(x)):
            yield [x[i:i + 1]]
    return gen


@pytest.mark.parametrize("make", [
    lambda x, y, name: x,
    lambda x, y, name: [x],
    lambda x, y, name: {name: x},
    lambda x, y, name: tf.constant(x),
    lambda x, y, name: tf.data.Dataset.from_tensor_slices((x, y)).batch(32),
    lambda x, y, name: tf.data.Dataset.from_tensor_slices(x),
    _gen_function,
    lambda x, y, name: _gen_function(x)(),
], ids=["array", "list", "dict", "tensor", "dataset-xy-batched", "dataset-unbatched", "generator-fn",
        "generator"])
def test_representative_data_forms(make, float_model, digits):
    data = make(digits.x_train[:300], digits.y_train[:300], float_model.input_names[0])
    samples = _calibration_samples(data, float_model)
    assert len(samples) == MAX_CALIBRATION_SAMPLES
    assert all(len(s) == 1 and s[0].shape == (1, 8, 8, 1) and s[0].dtype == np.float32 for s in samples)


def test_multi_input_calibration_follows_input_names():
    """The flatbuffer sorts inputs by name; each input's range must still come from its own data."""
    first, second = keras.Input((6,), name="b_first"), keras.Input((3,), name="a_second")
    merged = keras.layers.Concatenate()([keras.layers.Dense(4)(first), keras.layers.Dense(4)(second)])
    model = keras.Model([first, second], keras.layers.Dense(2)(merged))
    rng = np.random.default_rng(0)
    report = verify(convert(model, [rng.random((64, 6), np.float32), 10 * rng.random((64, 3), np.float32)]))
    scales = {d["name"]: d["scale"] for d in report.inputs}
    assert report.integer_only
    assert scales["serving_default_b_first:0"] == pytest.approx(1 / 255, rel=0.05)
    assert scales["serving_default_a_second:0"] == pytest.approx(10 / 255, rel=0.05)


def test_dataset_converts(float_model, digits):
    dataset = tf.data.Dataset.from_tensor_slices((digits.x_train, digits.y_train)).batch(64)
    assert verify(convert(float_model, dataset)).integer_only


def _with_nans(x, count):
    x = x.copy()
    x.reshape(-1)[:count] = np.nan
    return x


def _two_input_model():
    inputs = [keras.Input((2,)), keras.Input((3,))]
    return keras.Model(inputs, keras.layers.Concatenate()(inputs))


BAD_INPUTS = [
    # (id, model factory, kwargs factory, error type, substrings the message must contain)
    ("model-wrong-type", lambda m: "not a model", lambda x: {"representative_data": x}, TypeError,
     ["`model`", "not a model"]),
    ("model-unbuilt", lambda m: keras.Sequential([keras.layers.Dense(3)]),
     lambda x: {"representative_data": x}, ValueError, ["`model`", "not built"]),
    ("no-representative-data", lambda m: m, lambda x: {}, ValueError,
     ["`representative_data`", "required", "representative_data=None"]),
    ("empty-array", lambda m: m, lambda x: {"representative_data": x[:0]}, ValueError,
     ["`representative_data`", "empty", "(0, 8, 8, 1)"]),
    ("empty-generator", lambda m: m, lambda x: {"representative_data": iter([])}, ValueError,
     ["`representative_data`", "empty"]),
    ("wrong-shape", lambda m: m, lambda x: {"representative_data": x[..., 0]}, ValueError,
     ["`representative_data`", "(8, 8, 1)", "(1500, 8, 8)"]),
    ("single-sample-no-batch", lambda m: m, lambda x: {"representative_data": x[0]}, ValueError,
     ["`representative_data`", "(8, 8, 1)", "x[None]"]),
    ("nan", lambda m: m, lambda x: {"representative_data": _with_nans(x, 3)}, ValueError,
     ["`representative_data`", "3 non-finite"]),
    ("inf", lambda m: m, lambda x: {"representative_data": np.where(x > 0.99, np.inf, x)}, ValueError,
     ["`representative_data`", "non-finite"]),
    ("strings", lambda m: m, lambda x: {"representative_data": np.full((4, 8, 8, 1), "a")}, TypeError,
     ["`representative_data`", "dtype <U1"]),
    ("list-wrong-length", lambda m: m, lambda x: {"representative_data": [x, x]}, ValueError,
     ["`representative_data`", "2 items", "1 input"]),
    ("one-array-for-two-inputs", lambda m: _two_input_model(),
     lambda x: {"representative_data": np.zeros((4, 2), np.float32)}, ValueError,
     ["`representative_data`", "one array", "2 inputs"]),
    ("float-io-not-bool", lambda m: m, lambda x: {"representative_data": x, "float_io": "yes"}, TypeError,
     ["`float_io`", "'yes'"]),
]


@pytest.mark.parametrize("make_model, make_kwargs, error, parts", [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_and_leave_model_unchanged(make_model, make_kwargs, error, parts, float_model,
                                                    digits):
    before = [w.copy() for w in float_model.get_weights()]
    with pytest.raises(error) as info:
        convert(make_model(float_model), **make_kwargs(digits.x_train))
    for part in parts:
        assert part in str(info.value), (part, str(info.value))
    after = float_model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def _tensor(name, dtype, quantized=False):
    scales = np.array([0.1], np.float32) if quantized else np.array([], np.float32)
    return {"name": name, "dtype": dtype, "shape": np.array([4]),
            "quantization_parameters": {"scales": scales}}


def _graph(tensors, ops, inputs, outputs):
    return StaticGraph(tensors=dict(enumerate(tensors)), ops=ops, inputs=inputs, outputs=outputs,
                       input_details=[], output_details=[], other_subgraph_tensors=[])


def _op(index, name, inputs, outputs):
    return {"index": index, "op_name": name, "inputs": inputs, "outputs": outputs}


# Hand-built graphs for each clause of the integer-only rule: (graph, float_io, #float, #disallowed).
RULE_CASES = {
    "int64-axis-constant-ok": (_graph(
        [_tensor("x", np.int8), _tensor("axis", np.int64), _tensor("y", np.int8)],
        [_op(0, "MEAN", [0, 1], [2])], [0], [2]), False, 0, 0),
    "int64-activation-disallowed": (_graph([_tensor("x", np.int8), _tensor("idx", np.int64)],
                                           [_op(0, "ARG_MAX", [0], [1])], [0], [1]), False, 0, 1),
    "int16-quantized-constant-disallowed": (_graph(
        [_tensor("x", np.int8), _tensor("w", np.int16, quantized=True), _tensor("y", np.int8)],
        [_op(0, "FULLY_CONNECTED", [0, 1], [2])], [0], [2]), False, 0, 1),
    "float-io-quantize-dequantize-ok": (_graph(
        [_tensor("in", np.float32), _tensor("q", np.int8), _tensor("d", np.float32)],
        [_op(0, "QUANTIZE", [0], [1]), _op(1, "DEQUANTIZE", [1], [2])], [0], [2]), True, 0, 0),
    "float-io-but-float-op": (_graph(
        [_tensor("in", np.float32), _tensor("w", np.float32), _tensor("y", np.float32)],
        [_op(0, "FULLY_CONNECTED", [0, 1], [2])], [0], [2]), True, 3, 0),
    "float-io-not-allowed": (_graph(
        [_tensor("in", np.float32), _tensor("q", np.int8)], [_op(0, "QUANTIZE", [0], [1])], [0], [1]),
        False, 1, 0),
}


@pytest.mark.parametrize("case", list(RULE_CASES.values()), ids=list(RULE_CASES))
def test_integer_only_rule(case):
    graph, float_io, n_float, n_disallowed = case
    floats, disallowed = tensor_violations(graph, float_io)
    assert (len(floats), len(disallowed)) == (n_float, n_disallowed)
