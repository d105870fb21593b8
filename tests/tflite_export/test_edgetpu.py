"""Static Edge TPU compatibility check: golden cases and single-rule edits."""

import numpy as np
import pytest

from tests.tflite_export import test_codebook
from tflite_export import compress, decompress, edgetpu
from tflite_export import flatbuffer as fb
from tfq_ext._keras import tf

# Session fixtures shared with test_codebook (built once per session).
codebook_int8, compressed = test_codebook.codebook_int8, test_codebook.compressed


@pytest.fixture(scope="session")
def float_tflite(float_model):
    return tf.lite.TFLiteConverter.from_keras_model(float_model).convert()


@pytest.fixture(scope="session")
def cumsum_int8(cumsum_model, calibration_16):
    from tflite_export import convert

    return convert(cumsum_model, calibration_16, verify=False)


def test_dense_int8_files_pass(ptq_int8, codebook_int8):
    for content in (ptq_int8, codebook_int8):
        report = edgetpu.check(content)
        assert report.compatible, str(report)
        assert {o.status for o in report.ops} == {"ok"}
        assert not report.needs_decompress and not report.unsupported


def test_float_interface_edges_run_on_cpu(ptq_float_io):
    report = edgetpu.check(ptq_float_io)
    assert report.compatible, str(report)
    assert [o.op for o in report.ops if o.status == "cpu"] == ["QUANTIZE", "DEQUANTIZE"]


def test_float_model_fails(float_tflite):
    report = edgetpu.check(float_tflite)
    assert not report.compatible
    conv = next(o for o in report.ops if o.op == "CONV_2D")
    assert conv.status == "unsupported"
    assert any("float32, expected int8/uint8" in r for r in conv.reasons)
    assert any("dynamic shape" in r for o in report.ops for r in o.reasons)  # the Keras batch axis is None


def test_unsupported_op_is_named(cumsum_int8):
    report = edgetpu.check(cumsum_int8)
    assert not report.compatible
    blocking = {o.op for o in report.unsupported}
    assert "CUMSUM" in blocking
    cumsum = next(o for o in report.ops if o.op == "CUMSUM")
    assert "not in the Edge TPU's supported operations" in cumsum.reasons
    assert "CUMSUM" in str(report) and "NOT compatible" in str(report)
    # the DEQUANTIZE in front of the float CUMSUM is mid-graph, not a boundary op
    assert all(o.status == "unsupported" for o in report.ops if o.op == "DEQUANTIZE")


def test_compressed_file_needs_decompress(compressed):
    content, report = compressed
    result = edgetpu.check(content)
    assert not result.compatible and result.needs_decompress
    decode = [o for o in result.ops if o.op == "TfqCodebookDecode"]
    assert len(decode) == len(report.compressed)
    assert all(o.status == "needs-decompress" and "decompress" in o.reasons[0] for o in decode)
    assert "needs tflite_export.decompress first" in str(result)
    # only the decode nodes block: the rest of the graph is fine once decompressed
    assert {o.status for o in result.ops if o.op != "TfqCodebookDecode"} == {"ok"}
    assert result.compatible_after_decompress and result.layout == "kernel"
    assert [w.name for w in result.compressed_weights] == [t.name for t in report.compressed]
    assert [o.index for o in result.ops] == list(range(len(fb.read_model(content).subgraphs[0].operators)))


def test_loader_layout_file_needs_decompress(codebook_int8):
    content = compress(codebook_int8, layout="loader")
    result = edgetpu.check(content)
    # the ops are the decompressed model's: weights stored past the end of the flatbuffer count as constants
    assert result.needs_decompress and not result.compatible and result.compatible_after_decompress
    assert result.layout == "loader" and len(result.compressed_weights) == 3
    assert [o.status for o in result.ops] == ["ok"] * 8
    assert ("needs tflite_export.decompress first (loader layout, 3 compressed weights); the decompressed model "
            "is compatible") in str(result)
    assert all(f"compressed weight {w.name!r}" in str(result) for w in result.compressed_weights)
    assert edgetpu.check(decompress(content)).compatible


def test_compressed_file_with_an_incompatible_dense_model(codebook_int8):
    content = compress(_edit(codebook_int8, _new_conv_version), layout="loader")
    result = edgetpu.check(content)
    assert result.needs_decompress and not result.compatible_after_decompress
    assert "the decompressed model is NOT compatible" in str(result)
    assert [o.op for o in result.unsupported] == ["CONV_2D"] * 3


def _edit(content, edit):
    model = fb.read_model(content)
    edit(model, model.subgraphs[0])
    return fb.write_model(model)


def _first(model, subgraph, name):
    return next(op for op in subgraph.operators if fb.op_name(model, op) == name)


def _new_conv_version(model, subgraph):
    model.operatorCodes[_first(model, subgraph, "CONV_2D").opcodeIndex].version = 6


def _dynamic_batch(model, subgraph):
    tensor = subgraph.tensors[subgraph.inputs[0]]
    tensor.shapeSignature = np.asarray([-1, *tensor.shape[1:]], np.int32)


def _rank_4(model, subgraph):
    tensor = subgraph.tensors[subgraph.inputs[0]]
    tensor.shape = np.asarray([2, 8, 8, 2], np.int32)


def _int8_bias(model, subgraph):
    subgraph.tensors[_first(model, subgraph, "CONV_2D").inputs[2]].type = fb.schema().TensorType.INT8


def _int16_activation(model, subgraph):
    subgraph.tensors[_first(model, subgraph, "CONV_2D").outputs[0]].type = fb.schema().TensorType.INT16


def _two_subgraphs(model, subgraph):
    model.subgraphs.append(fb.schema().SubGraphT())
    model.subgraphs[-1].tensors, model.subgraphs[-1].operators = [], []


EDITS = {
    "op-version": (_new_conv_version, "CONV_2D", "version 6 is newer than the 2021 compiler's 5"),
    "dynamic-shape": (_dynamic_batch, "CONV_2D", "dynamic shape [-1, 8, 8, 1]"),
    "rank-4": (_rank_4, "CONV_2D", "has 4 dimensions larger than 1 (at most 3)"),
    "int8-bias": (_int8_bias, "CONV_2D", "is int8, expected int32"),
    "int16-activation": (_int16_activation, "CONV_2D", "is int16, expected int8/uint8"),
    "two-subgraphs": (_two_subgraphs, None, "2 subgraphs"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_each_rule(ptq_int8, case):
    edit, op, message = EDITS[case]
    report = edgetpu.check(_edit(ptq_int8, edit))
    assert not report.compatible
    if op is None:
        assert any(message in issue for issue in report.model_issues)
    else:
        flagged = next(o for o in report.ops if o.op == op)
        assert flagged.status == "unsupported"
        assert any(message in r for r in flagged.reasons), flagged.reasons


def test_supported_table_is_conservative():
    # every op the converter emits for an int8 CNN, at the versions TF 2.21 writes, is in the table
    for name, version in {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 4, "MAX_POOL_2D": 2,
                          "RESHAPE": 1, "SOFTMAX": 2, "ADD": 2, "MEAN": 2, "QUANTIZE": 1}.items():
        assert edgetpu.SUPPORTED_OPS[name] >= version
    for missing in ("HARD_SWISH", "GATHER", "CUMSUM", "DEQUANTIZE", "BATCH_MATMUL"):
        assert missing not in edgetpu.SUPPORTED_OPS


def _unnamed_int16_activation(model, subgraph):
    _int16_activation(model, subgraph)
    subgraph.tensors[_first(model, subgraph, "CONV_2D").outputs[0]].name = None


def _odd_name_int16_activation(model, subgraph):
    _int16_activation(model, subgraph)
    subgraph.tensors[_first(model, subgraph, "CONV_2D").outputs[0]].name = b"\xff\xfe act"


def test_odd_tensor_names_are_shown(ptq_int8):
    for edit, shown in ((_unnamed_int16_activation, "'<unnamed>' is int16"),
                        (_odd_name_int16_activation, "'\ufffd\ufffd act' is int16")):
        report = edgetpu.check(_edit(ptq_int8, edit))  # AttributeError / nothing shown before
        conv = next(o for o in report.ops if o.op == "CONV_2D")
        assert any(shown in r for r in conv.reasons), conv.reasons


def _buffer_out_of_range(model, subgraph):
    subgraph.tensors[_first(model, subgraph, "CONV_2D").inputs[1]].buffer = 10**6


def _opcode_out_of_range(model, subgraph):
    _first(model, subgraph, "CONV_2D").opcodeIndex = 99


def _tensor_out_of_range(model, subgraph):
    _first(model, subgraph, "CONV_2D").outputs = np.asarray([10**6], np.int32)


@pytest.mark.parametrize("edit, match", [
    (_buffer_out_of_range, r"tensor \d+ of subgraph 0 names buffer 1000000"),
    (_opcode_out_of_range, "operator 0 of subgraph 0 uses operator code 99"),
    (_tensor_out_of_range, "operator 0 of subgraph 0 has output tensor 1000000"),
], ids=["buffer", "opcode", "tensor"])
def test_references_out_of_range_are_value_errors(ptq_int8, edit, match):
    with pytest.raises(ValueError, match=match):  # IndexError before
        edgetpu.check(_edit(ptq_int8, edit))


def test_malformed_compressed_file_is_a_value_error(compressed):
    bad = test_codebook.edit_decode_node(compressed[0], test_codebook.HOSTILE["output-holds-constant-data"][0])
    with pytest.raises(ValueError, match="TfqCodebookDecode node 1 of subgraph 0 .* own an empty buffer"):
        edgetpu.check(bad)


def test_argument_errors():
    with pytest.raises(TypeError, match="flatbuffer"):
        edgetpu.check("model.tflite")
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        edgetpu.check(b"0123456789")
