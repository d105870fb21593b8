"""Compressed TFLite files of real Quant-Noise + iPQ, KQ and DiffQ models: bytes on disk vs each method's size
accounting, and how the file runs: latency of the dense int8 file, of the compressed file loaded through the C
loader (``tfq_decompress``), and of the custom-op path (interleaved, 1 thread, medians); load time of the C
loader vs Python ``decompress``; byte identity of the two loaders.

Models (Fashion-MNIST, trained here): the Quant-Noise CNN of ``benchmarks/quant_noise_pq.py`` with iPQ (K=256),
the KQ CNN of ``benchmarks/kq.py`` with a BatchNormalization after each conv (folded by KQ, exported by
``kq.export_tflite``), and the DiffQ CNN of ``benchmarks/diffq.py`` (``diffq.export_tflite(compressed=True)``).

Run with ``python -m benchmarks.run --only compressed_tflite [--quick]``.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from tfq_ext._keras import keras, tf


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _ipq(data, quick):
    """Quant-Noise training + iPQ; accounting: packed indices, int8 codebooks (+ a float32 scale), int8 weights
    of the other layers, int32 biases."""
    from benchmarks.quant_noise_pq import _train, build_cnn
    from tfq_ext import model_size
    from tfq_ext.ops.size import codebook_bytes
    from tfq_ext.quant_noise import add_quant_noise, quantize_pq, to_dense_model

    x, y = data.x_train, data.y_train
    keras.utils.set_random_seed(0)
    noisy = add_quant_noise(build_cnn(), noise_rate=0.1)
    _train(noisy, x, y, 1 if quick else 2)
    pq, _ = quantize_pq(noisy, x, y, n_centroids=256, finetune_epochs=0.1 if quick else 0.25, loss=_loss(),
                        optimizer=lambda: keras.optimizers.Adam(1e-4), verbose=0)
    accounting = 0
    layers = {layer.name: layer for layer in pq.layers}
    for entry in model_size(pq).tensors:
        layer = layers[entry.layer]
        if entry.method == "pq":
            accounting += entry.index_bytes + codebook_bytes(layer.n_centroids, layer.block_dim, 8)
        else:
            accounting += entry.params * (4 if entry.name == "bias" else 1)
    import tflite_export

    dense = tflite_export.convert(to_dense_model(pq), representative_data=x[:200], per_channel=False)
    return dense, accounting, "Quant-Noise (p=0.1) + iPQ K=256, per-tensor int8"


def _kq(data, quick):
    """KQ of a conv-BN CNN (KQ folds the BatchNormalizations first); accounting: per KQ conv ceil(log2 K) bits per
    kernel + an int8 codebook, int8 for the rest, int32 biases."""
    from tfq_ext.kq import export_tflite, quantize_kernels

    x, y = data.x_train, data.y_train
    layers = keras.layers

    def conv(name, filters, strides=1):
        return [layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name),
                layers.BatchNormalization(name=f"{name}_bn"), layers.ReLU()]

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), *conv("conv1", 32, 2), *conv("conv2", 32),
                              layers.MaxPooling2D(), *conv("conv3", 64), *conv("conv4", 64),
                              layers.GlobalAveragePooling2D(), layers.Dense(10, name="logits")], name="kq_bn_cnn")
    model.compile(keras.optimizers.Adam(1e-3), _loss(), metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=1 if quick else 3, verbose=0)
    steps = 20 if quick else 200
    kq, report = quantize_kernels(model, x[:steps * 128], y[:steps * 128], bits_per_weight=1.7, finetune_epochs=1,
                                  batch_size=128, optimizer=keras.optimizers.Adam(1e-3), loss=_loss(), verbose=0)
    accounting = 0
    for layer in kq.layers:  # the BatchNormalizations are folded into the convs (their biases) by KQ
        if layer.name in report["layers"]:  # int8 codebook in the file (6-bit values stored as int8)
            row = report["layers"][layer.name]
            accounting += math.ceil(row["kernels"] * max(1, math.ceil(math.log2(row["K"]))) / 8) + \
                row["K"] * int(np.prod(layer.kernel_size)) + (4 * layer.filters if layer.use_bias else 0)
        else:  # int8 weights, int32 biases
            accounting += sum(int(np.prod(w.shape)) * (4 if "bias" in w.name else 1) for w in layer.weights)
    dense = export_tflite(kq, x[:200], compressed=False)
    return dense, accounting, f"KQ at 1.7 bits/conv weight (K {'/'.join(str(r['K']) for r in report['layers'].values())})"


def _diffq(data, quick):
    """DiffQ with learned bits (2..8 per group of 8); accounting: ``diffq.true_size`` (packed codes, bits fields,
    ranges, float32 for the rest)."""
    from benchmarks.diffq import build_cnn
    from tfq_ext import diffq

    x, y = data.x_train, data.y_train
    keras.utils.set_random_seed(0)
    model = diffq.apply_diffq(build_cnn(), group_size=8, penalty=8.0, min_size=0, max_bits=8, init_bits=6)
    model.compile(diffq.DiffQOptimizer(keras.optimizers.Adam(1e-3), bits_learning_rate=3e-2), _loss(),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    dense = diffq.export_tflite(model, x[:200], per_channel=False)
    return dense, diffq.true_size(model), f"DiffQ, {diffq.mean_bits(model):.2f} mean bits per weight"


def _median_ms(fn, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def _measure(name, dense, accounting, description, xt, yt, quick):
    import tflite_export
    from tflite_export import kernels

    small, report = tflite_export.compress(dense, return_report=True)
    kernel_file = tflite_export.compress(dense, layout="kernel")
    python_loaded = tflite_export.decompress(small)
    native_loaded = kernels.decompress_native(small)
    accuracy = {}
    for key, content, interpreter in (("dense_int8", dense, None), ("loader", native_loaded, None),
                                      ("custom_op", None, tflite_export.load_interpreter(kernel_file, use_kernel=True))):
        accuracy[key] = float(np.mean(np.argmax(tflite_export.run(content, xt, interpreter=interpreter), 1) == yt))
    partitions = {key: tflite_export.verify(content).delegate_partitions
                  for key, content in (("dense_int8", dense), ("loader", native_loaded))}
    log(f"{name}: latency dense vs C-loaded vs custom op (interleaved, 1 thread)")
    latency = tflite_export.compare_latency(
        {"dense_int8": dense, "loader": native_loaded, "custom_op": kernel_file},
        rounds=10 if quick else 30, runs_per_round=10, num_threads=1,
        custom_op_registerers={"custom_op": [kernels.registerer()]})
    load_ms = {"native": [], "python": []}
    for _ in range(5 if quick else 15):  # interleaved
        load_ms["native"].append(_median_ms(lambda: kernels.decompress_native(small), 1))
        load_ms["python"].append(_median_ms(lambda: tflite_export.decompress(small), 1))
    return {
        "description": description,
        "bytes": {"dense_int8": len(dense), "compressed": len(small), "kernel_layout": len(kernel_file),
                  "loaded": len(native_loaded), "accounting": int(accounting)},
        "compressed_vs_accounting": len(small) / accounting,
        "native_equals_python": native_loaded == python_loaded,
        "accuracy": accuracy, "partitions": partitions, "latency": latency,
        "load_ms_median": {k: float(np.median(v)) for k, v in load_ms.items()},
        "tensors": str(report),
        "encodings": sorted({t.encoding for t in report.compressed}),
    }


def main(out_dir, quick: bool = False, command: str = "") -> dict:
    from tfq_ext.data import load_fashion_mnist

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*K clamped.*")
    data = load_fashion_mnist(limit_train=10000 if quick else None)
    xt, yt = data.x_test[:2000], data.y_test[:2000]
    models = {}
    for name, build in (("ipq", _ipq), ("kq", _kq), ("diffq", _diffq)):
        log(f"{name}: training and export")
        dense, accounting, description = build(data, quick)
        models[name] = _measure(name, dense, accounting, description, xt, yt, quick)
        log(models[name]["tensors"])
    result = {"benchmark": "compressed_tflite", "quick": quick, "command": command,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "tensorflow": tf.__version__},
              "models": models, "seconds": round(time.perf_counter() - t0, 1)}
    (out_dir / "compressed_tflite.json").write_text(json.dumps(result, indent=2))
    (out_dir / "compressed_tflite.md").write_text(_table(result))
    print(_table(result), flush=True)
    return result


def _table(result) -> str:
    lines = [
        "| model | dense int8 bytes | compressed bytes | accounting bytes | file / accounting | encodings | "
        "accuracy dense / C-loaded / custom op | XNNPACK partitions dense / C-loaded | latency ms dense / C-loaded / "
        "custom op | C-loaded / dense | load ms C / Python | C output == Python |",
        "|---|---:|---:|---:|---:|---|---|---|---|---:|---|---|",
    ]
    for name, m in result["models"].items():
        b, acc, lat = m["bytes"], m["accuracy"], m["latency"]
        lines.append(
            f"| {m['description']} | {b['dense_int8']} | {b['compressed']} | {b['accounting']} | "
            f"{m['compressed_vs_accounting']:.3f} | {', '.join(m['encodings'])} | "
            f"{acc['dense_int8']:.4f} / {acc['loader']:.4f} / {acc['custom_op']:.4f} | "
            f"{m['partitions']['dense_int8']} / {m['partitions']['loader']} | "
            f"{lat['models']['dense_int8']['median_ms']:.4f} / {lat['models']['loader']['median_ms']:.4f} / "
            f"{lat['models']['custom_op']['median_ms']:.4f} | {lat['ratio']['loader']:.3f} | "
            f"{m['load_ms_median']['native']:.2f} / {m['load_ms_median']['python']:.2f} | "
            f"{m['native_equals_python']} |")
    lines.append(f"\nCommand: `{result['command'] or 'python -m benchmarks.run --only compressed_tflite'}` "
                 f"({result['date']}, {result['seconds']:.0f} s); accuracy on 2000 Fashion-MNIST test images; "
                 "latency interleaved, 1 thread, medians of 10-run rounds; load = compressed bytes -> dense bytes.")
    return "\n".join(lines) + "\n"
