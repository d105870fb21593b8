import json

import numpy as np
import pytest

from tfq_ext.cli import main


def test_demo_writes_files_and_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--float-epochs", "3", "--qat-epochs", "2"]) == 0
    for name in ("model_int8.tflite", "model_ptq_int8.tflite", "model_float.tflite", "report.json", "report.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["integer_only"] is True
    assert report["rows"]["qat_int8 (TFLite)"]["bytes"] < report["rows"]["float32 (TFLite)"]["bytes"] / 2
    assert "| qat_int8 (TFLite) |" in capsys.readouterr().out


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
