"""tfq_ext.compress_model and `tfq-ext compress`: real files, sizes and accuracies that match the files, errors."""

import json

import numpy as np
import pytest

from tfq_ext._keras import keras
from tfq_ext.compress import Candidate, _frontier, _recommend, compress_model
from tfq_ext.cli import main


def _tiny_cnn():
    layers = keras.layers
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(8, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.Conv2D(16, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.GlobalAveragePooling2D(), layers.Dense(10),
    ], name="tiny_cnn")


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(0)
    model = _tiny_cnn()
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train, digits.y_train, batch_size=64, epochs=6, verbose=0)
    return model


@pytest.fixture(scope="module")
def result(trained, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress")
    before = [w.copy() for w in trained.get_weights()]
    res = compress_model(trained, (digits.x_train[:600], digits.y_train[:600]), (digits.x_test, digits.y_test),
                         methods=["ptq_int8", "kq"], epochs=0.5, out_dir=out, latency_rounds=2, verbose=0)
    after = trained.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # the user's model is untouched
    return res, out


def _independent_accuracy(content, x, y):
    """Accuracy of a file run in ai-edge-litert directly (a compressed file decompressed first)."""
    import tflite_export
    from ai_edge_litert.interpreter import Interpreter

    if tflite_export.is_compressed(content):
        content = tflite_export.decompress(content)
    interpreter = Interpreter(model_content=content)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], [1, *x.shape[1:]])
    interpreter.allocate_tensors()
    correct = 0
    for image, label in zip(x, y):
        value = image[None]
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            value = np.clip(np.round(value / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], value.astype(inp["dtype"]))
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(out["index"])[0]) == label)
    return correct / len(y)


def test_candidates_are_real_files_with_their_measured_size_and_accuracy(result, digits):
    res, out = result
    names = [c.name for c in res.candidates]
    assert names == ["ptq_int8", "kq_1.7b", "kq_1.0b", "kq_0.6b"]
    for c in res.candidates:
        assert c.ok, c.error
        content = (out / c.file).read_bytes()
        assert c.bytes == len(content) == (out / c.file).stat().st_size
        assert c.accuracy == pytest.approx(_independent_accuracy(content, digits.x_test, digits.y_test), abs=1e-9)
        assert c.integer_only and c.partitions == 1 and c.latency_ms > 0
    kq = res.candidate("kq_1.0b")
    assert kq.compressed and kq.loaded_bytes > kq.bytes
    assert res.candidate("kq_1.0b").bytes < res.candidate("kq_1.7b").bytes < res.candidate("ptq_int8").bytes
    float_file = (out / "float32.tflite").read_bytes()
    assert res.float["bytes"] == len(float_file)
    assert res.float["accuracy"] == pytest.approx(_independent_accuracy(float_file, digits.x_test, digits.y_test))


def test_report_files_frontier_and_recommendation(result):
    res, out = result
    report = json.loads((out / "report.json").read_text())
    assert set(report["float"]) >= {"accuracy", "bytes"}
    for row, c in zip(report["candidates"], res.candidates):
        assert {"name", "method", "file", "bytes", "accuracy", "latency_ms"} <= set(row)
        assert (out / row["file"]).stat().st_size == row["bytes"] == c.bytes
    assert report["frontier"] == res.frontier == _frontier(res.candidates)
    assert report["recommended"] == res.recommended
    if res.recommended is not None:
        best = res.candidate(res.recommended)
        assert (out / "recommended.tflite").read_bytes() == (out / best.file).read_bytes()
        assert best.accuracy >= res.float["accuracy"] - 0.01 - 1e-12
        within = [c for c in res.candidates if c.accuracy >= res.float["accuracy"] - 0.01 - 1e-12]
        assert best.bytes == min(c.bytes for c in within)
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| ptq_int8 |" in md and "Recommendation:" in md


def _c(name, size, acc, status="ok", reference=False):
    return Candidate(name=name, method="m", description="", bytes=size, accuracy=acc, status=status,
                     reference=reference)


def test_frontier_and_recommendation_rules():
    cands = [_c("a", 100, 0.90), _c("b", 200, 0.95), _c("c", 150, 0.80), _c("d", 300, 0.95),
             _c("e", 50, 0.99, status="failed"), _c("ref", 10, 0.99, reference=True)]
    assert _frontier(cands) == ["a", "b"]  # c is beaten by a; d is as accurate as b but larger
    assert _recommend(cands, 0.96, 2.0, None)[0] == "b"  # smallest within 2 points of 0.96
    assert _recommend(cands, 0.96, 10.0, None)[0] == "a"
    assert _recommend(cands, 0.96, None, 160)[0] == "a"  # most accurate of at most 160 bytes
    assert _recommend(cands, 0.96, 0.5, None)[0] is None  # nothing within half a point
    assert _recommend(cands, 0.96, 10.0, 60)[0] is None


def test_time_budget_skips_candidates_but_still_reports(trained, digits, tmp_path):
    res = compress_model(trained, (digits.x_train[:200], digits.y_train[:200]), (digits.x_test, digits.y_test),
                         methods=["ptq_int8", "qat_int8"], time_budget=1e-6, out_dir=tmp_path, verbose=0)
    assert [c.status for c in res.candidates] == ["skipped", "skipped"]
    assert "time budget" in res.candidates[0].error
    assert res.recommended is None and json.loads((tmp_path / "report.json").read_text())["recommended"] is None


def test_ipq_plan_block_sizes_only_change_what_they_touch():
    from tfq_ext.compress import _ipq_plan

    layers = keras.layers
    fc = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(16, 3, name="conv"), layers.Conv2D(16, 3, name="k"),
                           layers.Flatten(), layers.Dense(64, name="fc"), layers.Dense(10, name="out")])
    # conv: 16 kernels, too few; k: 256 kernels of 9; fc: 9216 weights; out: 640 weights (160 blocks of 4).
    assert _ipq_plan(fc, 4) == (("k", 9), ("fc", 4), ("out", 4))
    assert _ipq_plan(fc, 8) == (("k", 9), ("fc", 8))  # out has 80 blocks of 8: stays int8
    assert _ipq_plan(fc, 16) == (("k", 9), ("fc", 16))
    all_conv = _tiny_cnn()  # 3x3 kernels are one block whatever the block size; the dense layer is too small
    assert _ipq_plan(all_conv, 8) == _ipq_plan(all_conv, 16) == _ipq_plan(all_conv, 4)


def test_a_setting_with_an_earlier_settings_plan_is_skipped(trained, digits, monkeypatch):
    import tfq_ext.compress as compress

    built = []

    def cheap_builder(ctx, block):  # the loop's bookkeeping is under test, not iPQ: record the call, give a file
        built.append(block)
        return compress._ptq(ctx, None)

    monkeypatch.setitem(compress._BUILDERS, "ipq", cheap_builder)
    res = compress_model(trained, (digits.x_train[:200], digits.y_train[:200]), (digits.x_test, digits.y_test),
                         methods=["ipq"], latency_rounds=0, verbose=0)
    assert built == [4]  # the tiny CNN's plan is the same at every block size
    assert [(c.name, c.status) for c in res.candidates] == [("ipq_b4", "ok"), ("ipq_b8", "skipped"),
                                                           ("ipq_b16", "skipped")]
    assert res.candidate("ipq_b16").error == "same layers and blocks as ipq_b4 on this model"


def test_diffq_candidate_learns_bits_then_trains_on_the_frozen_grid(trained, digits, monkeypatch):
    from tfq_ext import diffq
    import tfq_ext.compress as compress

    seen = {}
    real_freeze, real_export = diffq.freeze_bits, diffq.export_tflite

    def freeze(model, frozen=True):
        seen["bits_at_freeze"] = {k: v.copy() for k, v in diffq.learned_bits(model).items()}
        seen["size_at_freeze"] = diffq.true_size(model)
        seen["weights_at_freeze"] = [w.copy() for w in model.get_weights()]
        return real_freeze(model, frozen)

    def export(model, *args, **kwargs):
        seen["frozen"] = [w.frozen for w in diffq.diffq_layers(model)]
        seen["bits_at_export"] = diffq.learned_bits(model)
        seen["size_at_export"] = diffq.true_size(model)
        seen["weights_at_export"] = model.get_weights()
        return real_export(model, *args, **kwargs)

    monkeypatch.setattr(diffq, "freeze_bits", freeze)
    monkeypatch.setattr(diffq, "export_tflite", export)
    monkeypatch.setitem(compress._SETTINGS, "diffq", [("diffq_p3", 3.0, "")])
    res = compress_model(trained, (digits.x_train[:400], digits.y_train[:400]), (digits.x_test, digits.y_test),
                         methods=["diffq"], epochs=1.0, latency_rounds=0, verbose=0)
    candidate = res.candidate("diffq_p3")
    assert candidate.ok and candidate.compressed, candidate.error
    assert seen["frozen"] and all(seen["frozen"])
    assert seen["bits_at_export"].keys() == seen["bits_at_freeze"].keys()
    for name, bits in seen["bits_at_freeze"].items():
        np.testing.assert_array_equal(seen["bits_at_export"][name], bits)  # the second phase keeps the bits
    assert seen["size_at_export"] == seen["size_at_freeze"]
    # ... and trains the weights: some kernel moved after the freeze.
    assert any(not np.array_equal(a, b) for a, b in zip(seen["weights_at_freeze"], seen["weights_at_export"]))


def test_candidates_distill_from_the_float_model_and_the_reference_does_not(trained, digits, monkeypatch):
    import tfq_ext._training as training
    from tfq_ext._training import DistillationLoss

    seen = []
    real = training.fit_epochs

    def record(model, x, y, *args, **kwargs):
        seen.append((model.loss, np.asarray(y).copy()))
        return real(model, x, y, *args, **kwargs)

    monkeypatch.setattr(training, "fit_epochs", record)
    x, y = digits.x_train[:200], digits.y_train[:200]
    res = compress_model(trained, (x, y), (digits.x_test, digits.y_test), methods=["qat_int8", "tfmot_qat"],
                         epochs=1.0, latency_rounds=0, distill=True, verbose=0)
    assert res.candidate("qat_int8").ok and res.candidate("tfmot_qat").ok
    assert res.settings["distill"] and res.settings["distill"]["temperature"] > 0
    (qat_loss, qat_y), (ref_loss, ref_y) = seen
    assert isinstance(qat_loss, DistillationLoss) and qat_y.shape == (200, 11)
    # column 0: the labels (shuffled with the seed); the rest: the float model's log-probabilities
    assert sorted(qat_y[:, 0].astype(int)) == sorted(y)
    np.testing.assert_allclose(np.exp(qat_y[:, 1:]).sum(axis=1), 1.0, rtol=1e-5)
    assert not isinstance(ref_loss, DistillationLoss) and ref_y.shape == (200,)
    np.testing.assert_array_equal(ref_y, qat_y[:, 0])

    seen.clear()
    res = compress_model(trained, (x, y), (digits.x_test, digits.y_test), methods=["qat_int8"], epochs=1.0,
                         latency_rounds=0, verbose=0)
    assert res.settings["distill"] is False  # off by default
    assert not isinstance(seen[0][0], DistillationLoss) and seen[0][1].shape == (200,)


def test_custom_metric_and_loss(trained, digits):
    def top2(y_true, y_pred):
        return float(np.mean([t in np.argsort(p)[-2:] for t, p in zip(y_true, y_pred)]))

    res = compress_model(trained, (digits.x_train[:200], digits.y_train[:200]), (digits.x_test, digits.y_test),
                         methods=["ptq_int8"], metric=top2, latency_rounds=0, verbose=0,
                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert res.metric == "top2" and res.float["accuracy"] >= res.candidate("ptq_int8").accuracy - 0.05
    assert res.candidate("ptq_int8").latency_ms is None


def test_keras3_model(digits):
    import keras as keras3

    if not keras3.__version__.startswith("3"):
        pytest.skip("Keras 3 not installed")
    model = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Conv2D(8, 3, activation="relu"),
                               keras3.layers.GlobalAveragePooling2D(), keras3.layers.Dense(10)])
    res = compress_model(model, (digits.x_train[:200], digits.y_train[:200]), (digits.x_test[:50], digits.y_test[:50]),
                         methods=["ptq_int8"], latency_rounds=0, verbose=0)
    assert res.candidate("ptq_int8").ok and res.candidate("ptq_int8").integer_only


@pytest.mark.parametrize("kwargs,match", [
    (dict(methods=["nope"]), "methods"),
    (dict(max_accuracy_drop=-1), "max_accuracy_drop"),
    (dict(target_bytes=0), "target_bytes"),
    (dict(time_budget=float("nan")), "time_budget"),
    (dict(epochs=0), "epochs"),
    (dict(metric="accuracy"), "metric"),
    (dict(train=([1, 2], [1])), "train"),
    (dict(train=(np.zeros((4, 9, 9, 1)), np.zeros(4, int))), "does not match the model's input"),
    (dict(validation=(np.zeros((4, 8, 8, 1)), np.array([0, 1, 2, 10]))), r"outside \[0, 10\)"),
    (dict(validation=(np.zeros((4, 8, 8, 1)), np.full(4, 0.5))), "integer class labels"),
    (dict(validation=(np.zeros((4, 8, 8, 1)), np.zeros(3, int))), "same number of examples"),
    (dict(validation=np.zeros((4, 8, 8, 1))), "tuple"),
    (dict(distill="yes"), "distill"),
    (dict(distill=True, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)), "distill=True"),
], ids=["methods", "drop", "target", "budget", "epochs", "metric", "xy-lengths", "shape", "labels",
        "float-labels", "lengths", "not-a-tuple", "distill-type", "distill-custom-loss"])
def test_bad_input_is_refused_before_training(trained, digits, kwargs, match):
    args = {"train": (digits.x_train[:64], digits.y_train[:64]), "validation": (digits.x_test, digits.y_test)}
    args.update(kwargs)
    before = [w.copy() for w in trained.get_weights()]
    with pytest.raises((ValueError, TypeError), match=match):
        compress_model(trained, args.pop("train"), args.pop("validation"), verbose=0, **args)
    assert all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights()))


def test_out_dir_that_is_a_file(trained, digits, tmp_path):
    path = tmp_path / "taken"
    path.write_text("user data")
    with pytest.raises(ValueError, match="out_dir"):
        compress_model(trained, (digits.x_train[:64], digits.y_train[:64]), (digits.x_test, digits.y_test),
                       out_dir=path, verbose=0)
    assert path.read_text() == "user data"


def _npz(path, digits, **override):
    arrays = {"x_train": digits.x_train[:300], "y_train": digits.y_train[:300], "x_val": digits.x_test[:100],
              "y_val": digits.y_test[:100]}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def test_cli_end_to_end(trained, digits, tmp_path, capsys):
    trained.save(tmp_path / "model.keras")
    data = _npz(tmp_path / "data.npz", digits)
    out = tmp_path / "out"
    assert main(["compress", str(tmp_path / "model.keras"), "--data", data, "--out", str(out), "--methods",
                 "ptq_int8", "kq", "--epochs", "0.25", "--max-drop", "50", "--distill"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["distill"]["alpha"] == 0.5
    assert report["recommended"] in [c["name"] for c in report["candidates"]]
    for row in report["candidates"]:
        assert (out / row["file"]).stat().st_size == row["bytes"]
    assert (out / "recommended.tflite").exists() and (out / "frontier.png").exists() and (out / "report.md").exists()
    assert "| kq_1.0b |" in printed and "Recommendation:" in printed


def test_cli_reads_a_keras3_file(digits, tmp_path, capsys):
    import keras as keras3

    if not keras3.__version__.startswith("3"):
        pytest.skip("Keras 3 not installed")
    model = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Conv2D(8, 3, activation="relu"),
                               keras3.layers.GlobalAveragePooling2D(), keras3.layers.Dense(10, activation="softmax")])
    model.save(tmp_path / "k3.keras")
    out = tmp_path / "out"
    assert main(["compress", str(tmp_path / "k3.keras"), "--data", _npz(tmp_path / "d.npz", digits), "--out",
                 str(out), "--methods", "ptq_int8", "--target-bytes", "100000"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["candidates"][0]["status"] == "ok" and report["recommended"] == "ptq_int8"
    assert report["target_bytes"] == 100000 and report["max_accuracy_drop"] is None


@pytest.mark.parametrize("case,match", [
    ("missing-model", "MODEL not found"),
    ("garbage-model", "cannot read MODEL"),
    ("missing-data", "--data file not found"),
    ("missing-keys", r"missing \['y_val'\]"),
    ("not-npz", "not a readable .npz"),
    ("shape", "does not match the model's input"),
    ("labels", r"outside \[0, 10\)"),
    ("methods", "--methods"),
])
def test_cli_errors_before_training(trained, digits, tmp_path, case, match):
    model = tmp_path / "model.keras"
    trained.save(model)
    data = _npz(tmp_path / "data.npz", digits)
    if case == "missing-model":
        model = tmp_path / "nothing.keras"
    elif case == "garbage-model":
        model = tmp_path / "garbage.keras"
        model.write_bytes(b"not a model")
    elif case == "missing-data":
        data = str(tmp_path / "none.npz")
    elif case == "missing-keys":
        data = _npz(tmp_path / "d2.npz", digits, y_val=None)
    elif case == "not-npz":
        (tmp_path / "bad.npz").write_bytes(b"\x00" * 10)
        data = str(tmp_path / "bad.npz")
    elif case == "shape":
        data = _npz(tmp_path / "d3.npz", digits, x_val=np.zeros((100, 7, 7, 1), "float32"))
    elif case == "labels":
        data = _npz(tmp_path / "d4.npz", digits, y_train=np.full(300, 12))
    argv = ["compress", str(model), "--data", data, "--out", str(tmp_path / "out")]
    if case == "methods":
        argv += ["--methods", "magic"]
    with pytest.raises(SystemExit, match=match):
        main(argv)
    assert not (tmp_path / "out").exists()  # nothing written, nothing trained
