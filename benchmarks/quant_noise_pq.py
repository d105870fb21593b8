"""Quant-Noise + iPQ vs plain iPQ vs tfmot weight clustering on Fashion-MNIST, side by side in one process.

Arms, all from the same architecture and seed:
  float               trained ``epochs`` epochs
  plain -> iPQ        the float model, product-quantized (before / after centroid fine-tuning)
  Quant-Noise -> iPQ  trained ``epochs`` epochs with Quant-Noise (proxy, p), then the same iPQ
  tfmot clustering    the float model clustered with tfmot (2 and 4 clusters per layer), fine-tuned as long
Sizes come from ``tfq_ext.model_size`` (indices + float16 codebooks + float32 biases); tfmot's clustered file
is dense, so its size is reported both as the ideal packed size (log2(clusters) bits per weight + float32
centroids, same accounting) and as the gzip-compressed float32 .tflite that users would actually ship.

Run with ``python -m benchmarks.run --only quant_noise_pq [--quick]``.
"""

from __future__ import annotations

import datetime
import gzip
import json
import math
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from tfq_ext._keras import keras, tf

SEED = 0
BATCH = 128


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_cnn() -> keras.Model:
    layers = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(256, activation="relu", name="fc1"), layers.Dropout(0.2),
        layers.Dense(10, name="logits"),
    ], name="fmnist_pq_cnn")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=1024, verbose=0), axis=1) == y))


def _train(model, x, y, epochs, lr=1e-3):
    model.compile(keras.optimizers.Adam(lr), _loss(), metrics=["accuracy"])
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return model


def _tfmot_cluster(float_model, n_clusters, x, y, epochs):
    import tensorflow_model_optimization as tfmot

    clustering = tfmot.clustering.keras
    clone = keras.models.clone_model(float_model)
    clone.set_weights(float_model.get_weights())
    clustered = clustering.cluster_weights(
        clone, number_of_clusters=n_clusters,
        cluster_centroids_init=clustering.CentroidInitialization.KMEANS_PLUS_PLUS)
    _train(clustered, x, y, epochs, lr=1e-4)
    stripped = clustering.strip_clustering(clustered)
    # Ideal packed size with the same accounting as PQ: indices at log2(clusters) bits, float32 centroids,
    # everything else (biases) float32.
    ideal = 0
    for layer in stripped.layers:
        for weight in layer.weights:
            n = int(np.prod(weight.shape))
            if weight.name.endswith("kernel:0"):
                ideal += (n * int(math.ceil(math.log2(n_clusters))) + 7) // 8 + 4 * n_clusters
            else:
                ideal += 4 * n
    tflite = tf.lite.TFLiteConverter.from_keras_model(stripped).convert()
    return stripped, ideal, len(gzip.compress(tflite, 9)), len(tflite)


def main(out_dir, quick: bool = False, command: str = "") -> dict:
    from tfq_ext import model_size
    from tfq_ext.data import load_fashion_mnist
    from tfq_ext.quant_noise import add_quant_noise, quantize_pq, to_dense_model
    import tflite_export

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*K clamped.*")
    data = load_fashion_mnist(limit_train=10000 if quick else None)
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    if quick:
        xt, yt = xt[:2000], yt[:2000]
    epochs = 1 if quick else 4
    finetune = 0.1 if quick else 0.5  # epochs of fine-tuning after each iPQ stage
    settings = {"K256_d8": {"n_centroids": 256, "block_sizes": {"dense": 8}},
                "K256_d32": {"n_centroids": 256, "block_sizes": {"dense": 32}}}
    noise_rate = 0.1

    log(f"float training: {epochs} epochs on {len(x)} images")
    keras.utils.set_random_seed(SEED)
    float_model = _train(build_cnn(), x, y, epochs)
    float_bytes = model_size(float_model).bytes
    results = {"float": {"accuracy": _accuracy(float_model, xt, yt), "bytes": float_bytes, "compression": 1.0}}
    log(f"  float accuracy {results['float']['accuracy']:.4f}, {float_bytes} bytes")

    for setting, kwargs in settings.items():
        # Quant-Noise uses the block layout that iPQ will use (the paper's point: the noise matches phi).
        log(f"Quant-Noise training for {setting} (proxy, p={noise_rate}, blocks {kwargs['block_sizes']}): "
            f"{epochs} epochs")
        keras.utils.set_random_seed(SEED)
        qn_model = add_quant_noise(build_cnn(), noise_rate=noise_rate, noise="proxy",
                                   block_sizes=kwargs["block_sizes"])
        _train(qn_model, x, y, epochs)
        results[f"quant_noise_{setting}"] = {"accuracy": _accuracy(qn_model, xt, yt), "bytes": float_bytes,
                                             "compression": 1.0}
        log(f"  Quant-Noise model accuracy {results[f'quant_noise_{setting}']['accuracy']:.4f}")
        for arm, source in (("plain_ipq", float_model), ("quant_noise_ipq", qn_model)):
            log(f"{arm} {setting}: iPQ without fine-tuning, then with {finetune} epoch(s) per stage")
            before, _ = quantize_pq(source, loss=_loss(), verbose=0, **kwargs)
            after, stages = quantize_pq(source, x, y, finetune_epochs=finetune, loss=_loss(),
                                        optimizer=lambda: keras.optimizers.Adam(1e-4), verbose=0, **kwargs)
            size = model_size(after)
            entry = {"accuracy_before_finetune": _accuracy(before, xt, yt), "accuracy": _accuracy(after, xt, yt),
                     "bytes": size.bytes, "compression": float_bytes / size.bytes,
                     "layers": {k: v for s in stages for k, v in s["layers"].items()}}
            if arm == "quant_noise_ipq" and setting == "K256_d8":
                dense = to_dense_model(after)
                flatbuffer = tflite_export.convert(dense, representative_data=x[:200], per_channel=False)
                (out_dir / "quant_noise_pq_int8.tflite").write_bytes(flatbuffer)
                entry["tflite_int8_bytes"] = len(flatbuffer)
                entry["tflite_int8_accuracy"] = float(np.mean(np.argmax(tflite_export.run(flatbuffer, xt), 1) == yt))
                entry["size_table"] = str(size)
            results[f"{arm}_{setting}"] = entry
            log(f"  accuracy {entry['accuracy_before_finetune']:.4f} -> {entry['accuracy']:.4f}, "
                f"{entry['bytes']} bytes ({entry['compression']:.1f}x)")

    cluster_epochs = finetune * 4  # the same total fine-tuning budget as iPQ's four stages
    for n_clusters in (2, 4):
        log(f"tfmot clustering, {n_clusters} clusters per layer, {cluster_epochs} epoch(s) fine-tuning")
        cluster_x = x if cluster_epochs >= 1 else x[:int(len(x) * cluster_epochs)]
        stripped, ideal, gz, dense_bytes = _tfmot_cluster(float_model, n_clusters, cluster_x, y[:len(cluster_x)],
                                                          max(1, int(cluster_epochs)))
        results[f"tfmot_cluster_{n_clusters}"] = {
            "accuracy": _accuracy(stripped, xt, yt), "bytes": ideal, "compression": float_bytes / ideal,
            "tflite_gzip_bytes": gz, "tflite_bytes": dense_bytes, "compression_gzip": float_bytes / gz}
        log(f"  accuracy {results[f'tfmot_cluster_{n_clusters}']['accuracy']:.4f}, ideal {ideal} bytes, "
            f"gzip'd file {gz} bytes")

    report = {"benchmark": "quant_noise_pq", "quick": quick, "command": command,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "tensorflow": tf.__version__},
              "setup": {"train_images": len(x), "test_images": len(xt), "epochs": epochs,
                        "finetune_epochs_per_stage": finetune, "noise": "proxy", "noise_rate": noise_rate,
                        "settings": settings},
              "results": results, "seconds": round(time.perf_counter() - t0, 1)}
    (out_dir / "quant_noise_pq.json").write_text(json.dumps(report, indent=2))
    (out_dir / "quant_noise_pq.md").write_text(_table(report))
    _plot(results, out_dir / "quant_noise_pq.png")
    print(_table(report), flush=True)
    return report


def _table(report) -> str:
    lines = ["| arm | accuracy before fine-tune | accuracy | bytes | compression vs float32 |", "|---|---:|---:|---:|---:|"]
    for name, row in report["results"].items():
        before = row.get("accuracy_before_finetune")
        lines.append(f"| {name} | {'-' if before is None else f'{before:.4f}'} | {row['accuracy']:.4f} | "
                     f"{row['bytes']} | {row['compression']:.1f}x |")
    extra = report["results"].get("quant_noise_ipq_K256_d8", {})
    if "tflite_int8_bytes" in extra:
        lines.append(f"\nQuant-Noise + iPQ (K256_d8) as a dense per-tensor int8 .tflite: {extra['tflite_int8_bytes']} "
                     f"bytes, accuracy {extra['tflite_int8_accuracy']:.4f}.")
    for n in (2, 4):
        row = report["results"].get(f"tfmot_cluster_{n}")
        if row:
            lines.append(f"tfmot clustering ({n} clusters): the shipped float32 .tflite is {row['tflite_bytes']} bytes, "
                         f"{row['tflite_gzip_bytes']} after gzip ({row['compression_gzip']:.1f}x).")
    return "\n".join(lines) + "\n"


def _plot(results, path) -> None:
    """Accuracy vs size; filled markers after centroid fine-tuning, hollow ones before."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = {"float": ("k", "*", "float32"), "quant_noise_K": ("tab:gray", "*", "Quant-Noise model (float32)"),
              "plain_ipq": ("tab:blue", "o", "plain training -> iPQ"),
              "quant_noise_ipq": ("tab:red", "s", "Quant-Noise -> iPQ"),
              "tfmot_cluster": ("tab:green", "^", "tfmot clustering (ideal packed size)")}
    seen = set()
    for name, row in results.items():
        key = next(k for k in sorted(styles, key=len, reverse=True) if name.startswith(k))
        color, marker, label = styles[key]
        kib = row["bytes"] / 1024
        ax.scatter(kib, 100 * row["accuracy"], color=color, marker=marker, s=70,
                   label=None if key in seen else label)
        seen.add(key)
        if "accuracy_before_finetune" in row:
            ax.scatter(kib, 100 * row["accuracy_before_finetune"], facecolors="none", edgecolors=color,
                       marker=marker, s=70)
            ax.plot([kib, kib], [100 * row["accuracy_before_finetune"], 100 * row["accuracy"]], color=color,
                    alpha=0.3)
        if name.startswith(("plain_ipq", "tfmot")):
            ax.annotate(name.split("_")[-1] if "ipq" in name else name.split("_")[-1] + " clusters",
                        (kib, 100 * row["accuracy"]), fontsize=7, xytext=(6, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("model size (KiB, log scale; indices + codebooks + float32 rest)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("iPQ with and without Quant-Noise vs tfmot clustering\n(hollow: before centroid fine-tuning)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(out_dir) -> None:
    """Redraws the PNG from the saved JSON (no training)."""
    out_dir = Path(out_dir)
    _plot(json.loads((out_dir / "quant_noise_pq.json").read_text())["results"], out_dir / "quant_noise_pq.png")
