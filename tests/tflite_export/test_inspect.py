import io
import json

import pytest

from tests.tflite_export import test_codebook
from tflite_export import ConversionReport, codebook, inspect, verify
from tflite_export import flatbuffer as fb

# Session fixtures shared with test_codebook (built once per session).
codebook_int8, compressed = test_codebook.codebook_int8, test_codebook.compressed


@pytest.mark.parametrize("as_path", [False, True], ids=["bytes", "path"])
def test_inspect_prints_ops_buffers_and_delegation(ptq_int8, tmp_path, as_path):
    source = ptq_int8
    if as_path:
        source = tmp_path / "model.tflite"
        source.write_bytes(ptq_int8)
    stream = io.StringIO()
    report = inspect(source, file=stream)
    text = stream.getvalue()
    assert isinstance(report, ConversionReport) and report.integer_only
    for part in ("CONV_2D", "FULLY_CONNECTED", "int8[1,8,8,1]", "Constant buffers", "XNNPACK: 4/4",
                 "int8=7", f"{report.weight_bytes:,} bytes"):
        assert part in text, part
    # weights are listed largest first: the dense kernel (10 x 128 int8)
    assert "1,280 int8     [10, 128]" in text


def test_inspect_float_io_is_reported_as_such(ptq_float_io):
    report = inspect(ptq_float_io, file=io.StringIO())
    assert report.float_io and report.integer_only


@pytest.mark.parametrize("value, error, part", [
    ("/nonexistent/model.tflite", FileNotFoundError, "'/nonexistent/model.tflite'"),
    (b"definitely not a flatbuffer", ValueError, "TFL3"),
    (12, TypeError, "path_or_bytes=12"),
], ids=["missing-file", "bad-bytes", "wrong-type"])
def test_inspect_bad_input(value, error, part):
    with pytest.raises(error, match="path_or_bytes") as info:
        inspect(value, file=io.StringIO())
    assert part in str(info.value)


def test_inspect_file_that_is_not_a_flatbuffer(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, this is text")
    with pytest.raises(ValueError, match="path_or_bytes") as info:
        inspect(path, file=io.StringIO())
    assert "notes.txt" in str(info.value) and "TFL3" in str(info.value)


# --- compressed files and malformed names -----------------------------------------------------------------

@pytest.fixture(scope="module")
def both_layouts(codebook_int8, compressed):
    return {"kernel": compressed[0], "loader": codebook.compress(codebook_int8, layout="loader")}


@pytest.mark.parametrize("layout", ["kernel", "loader"])
def test_inspect_and_verify_read_compressed_files(both_layouts, codebook_int8, layout):
    content = both_layouts[layout]
    stream = io.StringIO()
    report = inspect(content, file=stream)
    text = stream.getvalue()
    weights = codebook.describe(content)
    dense = codebook.decompress(content)
    assert report.layout == layout and len(weights) == 3
    assert [(w.name, w.shape, w.bits, w.K, w.bytes_before, w.bytes_after) for w in report.compressed_weights] == \
        [(w.name, w.shape, w.bits, w.K, w.bytes_before, w.bytes_after) for w in weights]
    assert report.size_bytes == len(content) and report.dense_size_bytes == len(dense)
    # the checks are of the decompressed model: integer-only, all of it in one XNNPACK partition
    assert report.integer_only and report.fully_delegated and report.delegate_partitions == 1
    assert "TfqCodebookDecode" not in report.op_histogram
    assert f"Compressed file ({layout} layout" in text and f"compressed ({layout} layout): 3 weights" in text
    for w in weights:
        assert f"{w.bytes_before:>9,} {w.bytes_after:>9,} {w.encoding:<8} {w.bits:>4} {w.K:>5}" in text
    assert "XNNPACK: 8/8 nodes in 1 partition(s)" in text
    dense_report = verify(dense)
    assert dense_report.layout == "dense" and not dense_report.compressed_weights
    checked = verify(content)
    assert (checked.layout, checked.size_bytes, checked.weight_bytes, checked.op_histogram) == \
        (layout, len(content), dense_report.weight_bytes, dense_report.op_histogram)
    assert json.loads(json.dumps(checked.to_dict()))["compressed_weights"][0]["name"] == weights[0].name


def _edited(content, edit):
    model = fb.read_model(content)
    edit(model)
    return fb.write_model(model)


def _name_first_weight(name):
    def edit(model):
        subgraph = model.subgraphs[0]
        tensor = next(t for t in subgraph.tensors if fb.buffer_data(model, t.buffer) is not None)
        tensor.name = name
    return edit


@pytest.mark.parametrize("name, shown", [(b"\xff\xfe conv weight", "\ufffd\ufffd conv weight"), (None, "")],
                         ids=["not-utf8", "missing"])
def test_inspect_and_verify_read_odd_tensor_names(ptq_int8, name, shown):
    content = _edited(ptq_int8, _name_first_weight(name))
    stream = io.StringIO()
    report = inspect(content, file=stream)  # UnicodeDecodeError before
    assert report.integer_only and report.num_nodes == 4
    assert verify(content).integer_only
    if shown:
        assert shown in stream.getvalue()


def test_inspect_reads_a_custom_op_code_that_is_not_utf8(compressed):
    content = _edited(compressed[0], lambda m: [setattr(c, "customCode", b"\xffTfq") for c in m.operatorCodes
                                                if c.customCode])
    for reader in (lambda c: inspect(c, file=io.StringIO()), verify):
        with pytest.raises(ValueError, match="unresolved custom op: \ufffdTfq") as info:
            reader(content)
        assert type(info.value) is ValueError  # not UnicodeDecodeError


def test_inspect_names_the_node_of_a_malformed_compressed_file(both_layouts):
    kernel = test_codebook.edit_decode_node(both_layouts["kernel"], test_codebook.HOSTILE["decode-after-reader"][0])
    loader = both_layouts["loader"].replace(b"TFQCBLD1", b"TFQCBLD2")
    for content, match in ((kernel, "TfqCodebookDecode node .* reads the decoded tensor before"),
                           (loader, "magic")):
        for reader in (lambda c: inspect(c, file=io.StringIO()), verify):
            with pytest.raises(ValueError, match=match):
                reader(content)
