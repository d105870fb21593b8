"""Real data for ``benchmarks.applications``: MobileNetV3Small and EfficientNetB0 on Fashion-MNIST (32x32 RGB).

Each architecture (keras.applications, weights=None, 10 classes, logits) is trained from scratch in float, then
fine-tuned with tfq_ext QAT (BN frozen after the first QAT epoch) and converted to an int8 file; the float
reference continues for as many epochs with the same schedule (equal training budget), and the float model also
goes through post-training int8 (200 calibration images). Every accuracy is that of the TFLite file
on the 10k test images (ai-edge-litert, XNNPACK), next to the float Keras model. Latency: fp32 vs int8 files on
XNNPACK, 1 thread, interleaved rounds, medians. Epoch times are whole ``fit`` epochs (tracing included).
"""

from __future__ import annotations

import time

import numpy as np

ARCHITECTURES = ("MobileNetV3Small", "EfficientNetB0")
# EfficientNetB0 was still improving after 8 epochs (0.8265, +1 point in 3 more): 16 is closer to converged
FLOAT_EPOCHS = {"MobileNetV3Small": 12, "EfficientNetB0": 16}
# training images per architecture (the first n of the 60k): EfficientNetB0 is ~4x slower per image on 2 CPUs
TRAIN_IMAGES = {"MobileNetV3Small": 60_000, "EfficientNetB0": 20_000}
QAT_EPOCHS = 3
BATCH = 128


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _data(quick: bool):
    from tfq_ext._keras import tf
    from tfq_ext.data import load_fashion_mnist

    split = load_fashion_mnist()

    def prepare(x):
        out = []
        for start in range(0, len(x), 5000):  # resized in chunks: one call on 60k images needs ~1 GB more
            out.append(tf.image.resize(x[start:start + 5000], (32, 32)).numpy())
        x = np.concatenate(out) * 255.0
        return np.repeat(x, 3, axis=-1).astype("float32")

    x_train, y_train, x_test, y_test = split
    if quick:
        x_train, y_train, x_test, y_test = x_train[:2000], y_train[:2000], x_test[:500], y_test[:500]
    return prepare(x_train), y_train, prepare(x_test), y_test


def _model(name: str):
    from tfq_ext._keras import keras

    return getattr(keras.applications, name)(input_shape=(32, 32, 3), weights=None, classes=10,
                                             classifier_activation=None)


def _compile(model, lr: float, steps: int):
    from tfq_ext._keras import keras

    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1))
    model.compile(keras.optimizers.Adam(schedule), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def _fit(model, x, y, epochs: int) -> list[float]:
    """Whole-epoch ``fit`` seconds (the first includes tracing)."""
    from tfq_ext._keras import keras

    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)
            _log(f"  epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f} acc {logs['accuracy']:.4f} "
                 f"({times[-1]:.0f} s)")

    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[Timer()])
    return times


def _tflite_accuracy(flatbuffer: bytes, x, y) -> float:
    import tflite_export

    return float(np.mean(np.argmax(tflite_export.run(flatbuffer, x), axis=-1) == y))


def _float_file(model) -> bytes:
    from tfq_ext._keras import tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def run_architecture(name: str, data, quick: bool) -> dict:
    import tflite_export
    from tfq_ext._keras import keras
    from tfq_ext.qat import quantize_model

    x_train, y_train, x_test, y_test = data
    if not quick:
        x_train, y_train = x_train[:TRAIN_IMAGES[name]], y_train[:TRAIN_IMAGES[name]]
    keras.utils.set_random_seed(0)
    steps = -(-len(x_train) // BATCH)
    float_epochs = 1 if quick else FLOAT_EPOCHS[name]
    qat_epochs = 1 if quick else QAT_EPOCHS
    model = _model(name)
    _compile(model, 2e-3, steps * float_epochs)
    _log(f"{name}: float training, {float_epochs} epochs")
    float_times = _fit(model, x_train, y_train, float_epochs)
    float_keras = float(model.evaluate(x_test, y_test, batch_size=512, verbose=0)[1])
    fp32 = _float_file(model)
    ptq = tflite_export.convert(model, x_train[:200])
    # The float reference trains as many more epochs as QAT does (same schedule), so both have the same budget.
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    _compile(reference, 2e-4, steps * qat_epochs)
    _log(f"{name}: float reference, {qat_epochs} more epochs")
    _fit(reference, x_train, y_train, qat_epochs)
    reference_keras = float(reference.evaluate(x_test, y_test, batch_size=512, verbose=0)[1])
    _log(f"{name}: QAT, {qat_epochs} epochs")
    qat = quantize_model(model, freeze_bn_delay=steps)
    _compile(qat, 2e-4, steps * qat_epochs)
    qat_times = _fit(qat, x_train, y_train, qat_epochs)
    qat_keras = float(qat.evaluate(x_test, y_test, batch_size=512, verbose=0)[1])
    int8 = tflite_export.convert(qat)
    result = {
        "train_images": int(len(x_train)), "float_epochs": float_epochs, "qat_epochs": qat_epochs, "float_epoch_s": float_times,
        "qat_epoch_s": qat_times, "float_keras_acc": float_keras, "qat_keras_acc": qat_keras,
        "float_reference_keras_acc": reference_keras,
        "fp32_tflite_acc": _tflite_accuracy(fp32, x_test, y_test),
        "ptq_int8_tflite_acc": _tflite_accuracy(ptq, x_test, y_test),
        "qat_int8_tflite_acc": _tflite_accuracy(int8, x_test, y_test),
        "bytes": {"fp32": len(fp32), "ptq_int8": len(ptq), "qat_int8": len(int8)},
    }
    for key, flatbuffer in (("ptq_int8", ptq), ("qat_int8", int8)):
        report = tflite_export.verify(flatbuffer)
        result[f"{key}_file"] = {"integer_only": report.integer_only, "partitions": report.delegate_partitions,
                                 "outside": report.not_delegated}
    latency = tflite_export.compare_latency({"fp32": fp32, "qat_int8": int8, "ptq_int8": ptq},
                                            rounds=5 if quick else 20, runs_per_round=10, num_threads=1)
    result["latency"] = latency
    result["qat_minus_float_points"] = 100 * (result["qat_int8_tflite_acc"] - reference_keras)
    _log(f"{name}: float {float_keras:.4f}, QAT int8 file {result['qat_int8_tflite_acc']:.4f}, PTQ int8 file "
         f"{result['ptq_int8_tflite_acc']:.4f}")
    return result


def accuracy(quick: bool = False, names=ARCHITECTURES, previous: dict | None = None, save=None) -> dict:
    """Runs ``names``; rows of ``previous`` (an earlier result) for other architectures are kept. ``save(result)``
    is called after each architecture, so a long run keeps what it finished."""
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"`names` has unknown architectures {unknown}; expected names from {ARCHITECTURES}")
    data = _data(quick)
    result = {"data": "Fashion-MNIST resized to 32x32, RGB, [0, 255]; 10k test images", "batch": BATCH,
              "architectures": dict((previous or {}).get("architectures", {}))}
    for name in names:
        result["architectures"][name] = run_architecture(name, data, quick)
        if save is not None:
            save(result)
    return result
