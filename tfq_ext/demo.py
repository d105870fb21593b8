"""The main job on built-in data: a conv-BN CNN trained on scikit-learn's digits, then ``tfq_ext.compress_model``:
every method (post-training int8, integer-only QAT, KQ, DiffQ, Quant-Noise + iPQ, KQ + iPQ) to a real .tflite
file, and the size/accuracy frontier with the recommended file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict

from tfq_ext._keras import keras

__all__ = ["build_cnn", "run_demo"]


def build_cnn(input_shape=(8, 8, 1), classes: int = 10) -> keras.Model:
    """A small conv-BN-ReLU CNN (the demo's and the tests' default model)."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(32, 3, padding="same", use_bias=False), layers.BatchNormalization(momentum=0.9), layers.ReLU(),
        layers.Conv2D(32, 3, padding="same", use_bias=False), layers.BatchNormalization(momentum=0.9), layers.ReLU(),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", use_bias=False), layers.BatchNormalization(momentum=0.9), layers.ReLU(),
        layers.GlobalAveragePooling2D(),
        layers.Dense(classes),
    ], name="digits_cnn")


def _log(message: str) -> None:
    print(f"[tfq-ext demo] {message}", flush=True)


def run_demo(out_dir: str = "demo_out", float_epochs: int = 30, epochs: float = 4, seed: int = 0,
             methods=None, latency_rounds: int = 10) -> Dict:
    """Trains the float CNN on digits, runs :func:`tfq_ext.compress_model` on it and returns the report dict.

    Writes ``model_float.keras`` (the trained float model) and everything ``compress_model`` writes (the
    candidates' ``.tflite`` files, ``float32.tflite``, ``recommended.tflite``, ``report.json``, ``report.md``,
    ``frontier.png``) into ``out_dir``.
    """
    from tfq_ext.compress import compress_model
    from tfq_ext.data import load_digits

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    data = load_digits(seed=seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    t0 = time.perf_counter()
    _log(f"1/2 training the float CNN on scikit-learn digits ({len(data.x_train)} train / "
         f"{len(data.x_test)} validation images, {float_epochs} epochs)")
    model = build_cnn()
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, batch_size=64, epochs=float_epochs, verbose=0)
    model.save(out / "model_float.keras")
    _log(f"    float Keras accuracy {float(model.evaluate(data.x_test, data.y_test, verbose=0)[1]):.4f}; saved "
         f"{out / 'model_float.keras'}")
    _log("2/2 tfq_ext.compress_model: every method -> a real .tflite file, accuracy measured from the file")
    result = compress_model(model, (data.x_train, data.y_train), (data.x_test, data.y_test), methods=methods,
                            max_accuracy_drop=1.0, out_dir=out, epochs=epochs, latency_rounds=latency_rounds,
                            seed=seed)
    report = result.to_dict()
    report["data"] = f"scikit-learn digits (8x8), {len(data.x_train)} train / {len(data.x_test)} validation"
    report["demo_seconds"] = round(time.perf_counter() - t0, 1)
    print(result.to_markdown(), flush=True)
    _log(f"wrote the .tflite files, report.json, report.md and frontier.png to {out.resolve()} "
         f"({report['demo_seconds']:.0f} s)")
    return report
