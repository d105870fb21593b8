import numpy as np
import pytest

from tests.tflite_export import test_codebook
from tfq_ext._keras import keras, tf
from tflite_export import compare_latency, compress, delegation_report, make_interpreter, measure_latency, run, run_raw
from tflite_export import flatbuffer as fb
from tflite_export.runtime import output_quantization


@pytest.fixture(scope="module")
def float_cumsum_tflite(cumsum_model):
    """Plain float conversion: the delegation report must not depend on the int8 path."""
    return tf.lite.TFLiteConverter.from_keras_model(cumsum_model).convert()


def test_delegation_report_with_non_delegated_op(float_cumsum_tflite):
    report = delegation_report(float_cumsum_tflite)
    # FULLY_CONNECTED -> CUMSUM -> FULLY_CONNECTED: CUMSUM splits XNNPACK into two partitions
    assert report == {
        "nodes": 3,
        "delegated": 2,
        "delegate_partitions": 2,
        "not_delegated": ["CUMSUM"],
        "by_op": {"FULLY_CONNECTED": [2, 2], "CUMSUM": [0, 1]},
    }


def test_delegation_report_fully_delegated_int8(ptq_int8):
    report = delegation_report(ptq_int8)
    assert (report["nodes"], report["delegated"], report["delegate_partitions"]) == (4, 4, 1)
    assert all(delegated == total for delegated, total in report["by_op"].values())


@pytest.mark.parametrize("use_xnnpack, has_delegate", [(True, True), (False, False)],
                         ids=["xnnpack", "builtin"])
def test_make_interpreter_delegation(ptq_int8, use_xnnpack, has_delegate):
    interpreter = make_interpreter(ptq_int8, num_threads=1, use_xnnpack=use_xnnpack)
    names = [op["op_name"] for op in interpreter._get_ops_details()]
    assert ("DELEGATE" in names) is has_delegate


def test_make_interpreter_with_custom_op_registerers(ptq_int8, digits):
    """A Python registerer receives TensorFlow's op resolver; this one registers nothing."""
    pointers = []
    interpreter = make_interpreter(ptq_int8, custom_op_registerers=[pointers.append])
    assert len(pointers) == 1 and isinstance(pointers[0], int)
    np.testing.assert_array_equal(run_raw(None, digits.x_test[:4], interpreter=interpreter),
                                  run_raw(ptq_int8, digits.x_test[:4]))


@pytest.mark.parametrize("content, error, part", [
    ("model.tflite", TypeError, "open(path, 'rb')"),
    (b"\x00" * 16, ValueError, "TFL3"),
], ids=["path-instead-of-bytes", "not-a-flatbuffer"])
def test_make_interpreter_rejects_bad_content(content, error, part):
    with pytest.raises(error, match="model_content") as info:
        make_interpreter(content)
    assert part in str(info.value)


@pytest.mark.parametrize("batch", [1, 5, 297], ids=["b1", "b5", "b297"])
def test_run_shapes_and_raw_parity(ptq_int8, digits, batch):
    x = digits.x_test[:batch]
    raw = run_raw(ptq_int8, x)
    assert raw.shape == (batch, 10) and raw.dtype == np.int8
    out = run(ptq_int8, x)
    assert out.shape == (batch, 10) and out.dtype == np.float32
    scale, zero_point = output_quantization(ptq_int8)
    np.testing.assert_allclose(out, (raw.astype(np.float32) - zero_point) * scale, atol=1e-6 * scale)


def test_run_quantizes_float_input_like_int8_input(ptq_int8, digits):
    x = digits.x_test[:8]
    interpreter = make_interpreter(ptq_int8)
    detail = interpreter.get_input_details()[0]
    scale, zero_point = detail["quantization"]
    x_int8 = np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(run_raw(ptq_int8, x), run_raw(ptq_int8, x_int8))


def test_run_float_io(ptq_float_io, ptq_int8, digits):
    x = digits.x_test[:16]
    out = run(ptq_float_io, x)
    assert out.dtype == np.float32 and out.shape == (16, 10)
    # same integer graph behind QUANTIZE/DEQUANTIZE: identical up to float rounding of the dequantization
    scale, _ = output_quantization(ptq_int8)
    np.testing.assert_allclose(out, run(ptq_int8, x), atol=1e-5 * scale)


def test_run_falls_back_to_sample_loop():
    """A graph fixed to batch 1 (CONCATENATION with a [1, 4] constant) cannot be resized to batch 3."""
    inputs = keras.Input((4,), batch_size=1)
    hidden = keras.layers.Lambda(lambda z: tf.concat([z, tf.ones((1, 4))], axis=-1))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    interpreter = make_interpreter(content)
    out = run(None, x, interpreter=interpreter)
    expected = np.concatenate([model(x[i:i + 1]).numpy() for i in range(3)])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 4]  # left at batch 1 after the loop


def test_run_rejects_wrong_shape(ptq_int8, digits):
    with pytest.raises(ValueError, match=r"x\[None\]"):
        run(ptq_int8, digits.x_test[0])


def test_measure_latency(ptq_int8):
    result = measure_latency(ptq_int8, runs=10, warmup=2)
    assert 0 < result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["samples"] == 10


def test_compare_latency_interleaves(ptq_int8, ptq_float_io):
    result = compare_latency({"int8": ptq_int8, "float_io": ptq_float_io}, rounds=3, runs_per_round=4)
    assert result["baseline"] == "int8"
    assert result["ratio"]["int8"] == 1.0
    assert result["ratio"]["float_io"] > 0
    assert all(m["median_ms"] > 0 and m["samples"] == 12 for m in result["models"].values())


@pytest.mark.parametrize("kwargs, error, part", [
    ({"models": {}}, ValueError, "`models`"),
    ({"models": {"a": b"junk"}}, ValueError, "models['a']"),
    ({"models": None, "rounds": 0}, ValueError, "`models`"),
], ids=["empty", "bad-bytes", "none"])
def test_compare_latency_bad_input(kwargs, error, part):
    with pytest.raises(error) as info:
        compare_latency(**kwargs)
    assert part in str(info.value)


# --- files the interpreter cannot run as given ------------------------------------------------------------

codebook_int8, compressed = test_codebook.codebook_int8, test_codebook.compressed


def test_make_interpreter_says_how_to_run_compressed_files(codebook_int8, compressed):
    with pytest.raises(ValueError, match=r"compressed file \(kernel layout\) .*load_interpreter"):
        make_interpreter(compressed[0])  # RuntimeError "unresolved custom op" before
    with pytest.raises(ValueError, match=r"compressed file \(loader layout\).*decompress"):
        make_interpreter(compress(codebook_int8, layout="loader"))
    with pytest.raises(ValueError, match="compressed file"):
        delegation_report(compressed[0])


def test_messages_with_bytes_that_are_not_utf8(compressed):
    model = fb.read_model(compressed[0])
    for code in model.operatorCodes:
        if code.customCode:
            code.customCode = b"\xffTfq"
    content = fb.write_model(model)
    with pytest.raises(RuntimeError, match="unresolved custom op: \ufffdTfq"):  # UnicodeDecodeError before
        make_interpreter(content)
    with pytest.raises(ValueError, match="unresolved custom op: \ufffdTfq") as info:
        delegation_report(content)
    assert type(info.value) is ValueError
