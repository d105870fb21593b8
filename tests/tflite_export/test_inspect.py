import io

import pytest

from tflite_export import ConversionReport, inspect


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
