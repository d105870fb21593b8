"""Compressed TFLite files for a real Quant-Noise + iPQ model: bytes on disk vs the size accounting, and latency
of the three ways to run it (dense int8, decompress-on-load, the TfqCodebookDecode custom op), interleaved.

The model is the Fashion-MNIST CNN of ``benchmarks/quant_noise_pq.py`` (Quant-Noise training, iPQ with K=256,
blocks of 8 for Dense layers and one kernel per block for 3x3 convs), exported with per-tensor int8 weights.

Run with ``python -m benchmarks.run --only compressed_tflite [--quick]``.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from tfq_ext._keras import keras, tf


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _int8_accounting(pq_model) -> int:
    """tfq_ext's size accounting for the int8 file: packed indices, int8 codebooks (+ a float32 scale), int8
    weights of layers that are not product-quantized and int32 biases."""
    from tfq_ext import model_size
    from tfq_ext.ops.size import codebook_bytes

    total = 0
    layers = {layer.name: layer for layer in pq_model.layers}
    for entry in model_size(pq_model).tensors:
        layer = layers[entry.layer]
        if entry.method == "pq":
            total += entry.index_bytes + codebook_bytes(layer.n_centroids, layer.block_dim, 8)
        else:
            total += entry.params * (4 if entry.name == "bias" else 1)
    return total


def main(out_dir, quick: bool = False, command: str = "") -> dict:
    from benchmarks.quant_noise_pq import build_cnn, _loss, _train
    from tfq_ext.data import load_fashion_mnist
    from tfq_ext.quant_noise import add_quant_noise, quantize_pq, to_dense_model
    import tflite_export
    from tflite_export import kernels

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*K clamped.*")
    data = load_fashion_mnist(limit_train=10000 if quick else None)
    x, y, xt, yt = data.x_train, data.y_train, data.x_test[:2000], data.y_test[:2000]
    epochs, finetune = (1, 0.1) if quick else (2, 0.25)

    log(f"Quant-Noise training ({epochs} epochs on {len(x)} images), then iPQ K=256")
    keras.utils.set_random_seed(0)
    float_model = build_cnn()
    noisy = add_quant_noise(float_model, noise_rate=0.1)
    _train(noisy, x, y, epochs)
    pq, _ = quantize_pq(noisy, x, y, n_centroids=256, finetune_epochs=finetune, loss=_loss(),
                        optimizer=lambda: keras.optimizers.Adam(1e-4), verbose=0)
    dense = to_dense_model(pq)
    float_file = tf.lite.TFLiteConverter.from_keras_model(dense).convert()
    int8_file = tflite_export.convert(dense, representative_data=x[:200], per_channel=False)
    compressed, report = tflite_export.compress(int8_file, return_report=True)
    accounting = _int8_accounting(pq)
    log(str(report))

    restored = tflite_export.decompress(compressed)
    acc = {}
    for name, content in (("dense_int8", int8_file), ("decompressed", restored)):
        acc[name] = float(np.mean(np.argmax(tflite_export.run(content, xt), 1) == yt))
    kernel_interpreter = tflite_export.load_interpreter(compressed, use_kernel=True)
    acc["custom_op"] = float(np.mean(np.argmax(tflite_export.run(None, xt, interpreter=kernel_interpreter), 1) == yt))
    edgetpu = tflite_export.edgetpu.check(int8_file)

    log("latency: dense int8 vs decompressed vs custom op (interleaved, 1 thread)")
    latency = tflite_export.compare_latency(
        {"dense_int8": int8_file, "decompressed": restored, "custom_op": compressed},
        rounds=15 if quick else 30, runs_per_round=10, custom_op_registerers={"custom_op": [kernels.registerer()]})
    decompress_ms = []
    for _ in range(5):
        start = time.perf_counter()
        tflite_export.decompress(compressed)
        decompress_ms.append(1000 * (time.perf_counter() - start))

    result = {
        "benchmark": "compressed_tflite", "quick": quick, "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "tensorflow": tf.__version__},
        "bytes": {"float32_tflite": len(float_file), "int8_tflite": len(int8_file), "compressed_tflite": len(compressed),
                  "accounting_int8": accounting},
        "compression_vs_float32_tflite": len(float_file) / len(compressed),
        "compressed_vs_accounting": len(compressed) / accounting,
        "bit_exact_round_trip": restored == int8_file,
        "accuracy": acc,
        "latency": latency,
        "decompress_ms_median": float(np.median(decompress_ms)),
        "edgetpu_dense_int8_compatible": edgetpu.compatible,
        "edgetpu_compressed": str(tflite_export.edgetpu.check(compressed).needs_decompress),
        "tensors": str(report),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out_dir / "compressed_tflite.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| file | bytes | vs float32 .tflite | accuracy (2000 test images) | latency ms (median) | ratio vs dense int8 |",
        "|---|---:|---:|---:|---:|---:|",
        f"| float32 .tflite | {len(float_file)} | 1.0x | - | - | - |",
    ]
    for name, label, content in (("dense_int8", "dense int8 .tflite", int8_file),
                                 ("decompressed", "compressed, decompress-on-load", restored),
                                 ("custom_op", "compressed, custom-op kernel", compressed)):
        size = len(compressed) if name != "dense_int8" else len(int8_file)
        lines.append(f"| {label} | {size} | {len(float_file) / size:.1f}x | {acc[name]:.4f} | "
                     f"{latency['models'][name]['median_ms']:.4f} | {latency['ratio'][name]:.3f} |")
    lines.append(f"\nSize accounting (int8 codebooks, int32 biases): {accounting} bytes; the compressed file is "
                 f"{100 * (len(compressed) / accounting - 1):+.1f}% of it. decompress() takes "
                 f"{result['decompress_ms_median']:.1f} ms; round trip bit-exact: {result['bit_exact_round_trip']}; "
                 f"Edge TPU check of the dense int8 file: {'compatible' if edgetpu.compatible else 'NOT compatible'}.")
    (out_dir / "compressed_tflite.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return result
