"""The main job on built-in data: float CNN with BN on scikit-learn's digits -> integer-only QAT -> int8 TFLite.

Writes into the output folder: ``model_int8.tflite`` (QAT), ``model_ptq_int8.tflite`` (post-training baseline),
``model_float.tflite``, ``report.json`` and ``report.png``, and prints a table of accuracy, size and latency.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Dict

import numpy as np

from tfq_ext._keras import keras, tf

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


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _log(message: str) -> None:
    print(f"[tfq-ext demo] {message}", flush=True)


def run_demo(out_dir: str = "demo_out", float_epochs: int = 30, qat_epochs: int = 8, seed: int = 0) -> Dict:
    """Runs the demo end to end and returns the report (also written to ``out_dir/report.json``)."""
    import tflite_export
    from tfq_ext.data import load_digits
    from tfq_ext.qat import quantize_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tf.random.set_seed(seed)
    np.random.seed(seed)
    data = load_digits(seed=seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    t0 = time.perf_counter()

    _log(f"1/4 training the float CNN on scikit-learn digits ({len(data.x_train)} train / "
         f"{len(data.x_test)} test images, {float_epochs} epochs)")
    model = build_cnn()
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, batch_size=64, epochs=float_epochs, verbose=0)
    float_acc = float(model.evaluate(data.x_test, data.y_test, verbose=0)[1])
    _log(f"    float accuracy {float_acc:.4f}")

    steps_per_epoch = int(np.ceil(len(data.x_train) / 64))
    _log(f"2/4 integer-only QAT ({qat_epochs} epochs, BN folded, frozen after {qat_epochs // 2} epochs)")
    qat = quantize_model(model, freeze_bn_delay=steps_per_epoch * (qat_epochs // 2))
    qat.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    qat.fit(data.x_train, data.y_train, batch_size=64, epochs=qat_epochs, verbose=0)
    qat_acc = float(qat.evaluate(data.x_test, data.y_test, verbose=0)[1])
    _log(f"    QAT (Keras, fake-quant) accuracy {qat_acc:.4f}")

    _log("3/4 exporting: QAT int8, post-training int8 (baseline), float32")
    files = {
        "qat_int8": tflite_export.convert(qat),
        "ptq_int8": tflite_export.convert(model, representative_data=data.x_train[:200]),
        "float32": tf.lite.TFLiteConverter.from_keras_model(model).convert(),
    }
    names = {"qat_int8": "model_int8.tflite", "ptq_int8": "model_ptq_int8.tflite", "float32": "model_float.tflite"}
    for key, content in files.items():
        (out / names[key]).write_bytes(content)

    _log("4/4 evaluating the .tflite files in ai-edge-litert and timing them (XNNPACK, 1 thread, interleaved)")
    rows = {"float (Keras)": {"accuracy": float_acc}, "QAT (Keras)": {"accuracy": qat_acc}}
    for key, content in files.items():
        predictions = np.argmax(tflite_export.run(content, data.x_test), axis=1)
        delegation = tflite_export.delegation_report(content)
        rows[f"{key} (TFLite)"] = {
            "accuracy": float(np.mean(predictions == data.y_test)), "bytes": len(content),
            "delegated": f"{delegation['delegated']}/{delegation['nodes']}", "file": names[key],
        }
    latency = tflite_export.compare_latency({"qat_int8": files["qat_int8"], "ptq_int8": files["ptq_int8"],
                                             "float32": files["float32"]}, rounds=15, runs_per_round=20)
    for key in files:
        rows[f"{key} (TFLite)"]["latency_ms"] = latency["models"][key]["median_ms"]
    report = {
        "data": "scikit-learn digits (8x8), 1500 train / 297 test",
        "rows": rows,
        "latency_ratio_vs_qat_int8": latency["ratio"],
        "integer_only": tflite_export.verify(files["qat_int8"]).float_tensors == [],
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot(rows, out / "report.png")
    print(format_table(rows), flush=True)
    _log(f"wrote {', '.join(sorted(names.values()))}, report.json, report.png to {out.resolve()}")
    return report


def format_table(rows: Dict[str, Dict]) -> str:
    lines = ["| model | accuracy | .tflite bytes | latency (ms, median) | XNNPACK nodes |",
             "|---|---:|---:|---:|---:|"]
    for name, row in rows.items():
        latency = f"{row['latency_ms']:.4f}" if "latency_ms" in row else "-"
        lines.append(f"| {name} | {row['accuracy']:.4f} | {row.get('bytes', '-')} | {latency} | "
                     f"{row.get('delegated', '-')} |")
    return "\n".join(lines)


def _plot(rows: Dict[str, Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].barh(names, [rows[n]["accuracy"] for n in names], color="tab:blue")
    axes[0].set_xlim(min(rows[n]["accuracy"] for n in names) - 0.05, 1.0)
    axes[0].set_xlabel("test accuracy")
    files = [n for n in names if "bytes" in rows[n]]
    axes[1].barh(files, [rows[n]["bytes"] / 1024 for n in files], color="tab:orange")
    axes[1].set_xlabel(".tflite size (KiB)")
    fig.suptitle("tfq_ext demo: integer-only QAT on digits")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
