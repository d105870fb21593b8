import json

import numpy as np
import pytest

from tests.tflite_export import test_codebook
from tfq_ext.cli import main

codebook_int8 = test_codebook.codebook_int8  # session fixture shared with test_codebook


def test_demo_writes_files_and_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--float-epochs", "3", "--epochs", "0.25", "--methods",
                 "ptq_int8", "kq"]) == 0
    for name in ("model_float.keras", "float32.tflite", "ptq_int8.tflite", "kq_1.0b.tflite", "report.json",
                 "report.md", "frontier.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {row["name"]: row for row in report["candidates"]}
    assert rows["ptq_int8"]["integer_only"] is True
    assert rows["ptq_int8"]["bytes"] < report["float"]["bytes"] / 2
    assert rows["kq_1.0b"]["bytes"] < rows["ptq_int8"]["bytes"]
    assert "| kq_1.0b | kq |" in capsys.readouterr().out


def test_export_and_inspect(tmp_path, capsys, digits):
    from tfq_ext._keras import keras
    from tfq_ext.qat import quantize_model

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(10)])
    qat = quantize_model(model)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(digits.x_train[:256], digits.y_train[:256], epochs=1, verbose=0)
    qat.save(tmp_path / "qat.keras")
    out = tmp_path / "qat.tflite"
    assert main(["export", str(tmp_path / "qat.keras"), "-o", str(out)]) == 0
    assert out.read_bytes()[4:8] == b"TFL3"
    model.save(tmp_path / "float.keras")
    np.savez(tmp_path / "data.npz", x=digits.x_train[:64])
    assert main(["export", str(tmp_path / "float.keras"), "--data", str(tmp_path / "data.npz"),
                 "-o", str(tmp_path / "ptq.tflite")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert "CONV_2D" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [(["export", "missing.keras"], "MODEL"),
                                        (["inspect", "missing.tflite"], "missing.tflite")],
                         ids=["export-missing", "inspect-missing"])
def test_cli_bad_paths(argv, match):
    with pytest.raises((SystemExit, FileNotFoundError, ValueError), match=match):
        main(argv)


def test_inspect_a_compressed_file(tmp_path, capsys, codebook_int8):
    from tflite_export import compress

    path = tmp_path / "compressed.tflite"
    path.write_bytes(compress(codebook_int8, layout="loader"))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Compressed file (loader layout" in out and "compressed (loader layout): 3 weights" in out
    assert "encoding" in out and "codebook" in out and "XNNPACK: 8/8 nodes in 1 partition(s)" in out


def test_inspect_a_malformed_file_exits_with_its_message(tmp_path):
    path = tmp_path / "hostile.tflite"
    path.write_bytes(b"\x10\x00\x00\x00TFL3" + bytes(range(40)))
    with pytest.raises(SystemExit, match="tfq-ext inspect: "):
        main(["inspect", str(path)])
