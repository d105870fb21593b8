"""Quant-Noise + iPQ vs plain iPQ vs tfmot weight clustering on Fashion-MNIST, side by side in one process.

For each seed (3 seeds; the quick run uses 1), from one float model trained ``epochs`` epochs:
  plain -> iPQ        the float model trained ``extra`` more epoch(s) without noise, then product-quantized
  Quant-Noise -> iPQ  the float model trained the same ``extra`` epoch(s) with Quant-Noise ("pq" noise: a
                      Bernoulli(p) subset of blocks replaced by its nearest centroid, centroids re-clustered
                      every 100 batches with ``QuantNoiseCentroidRefresh``; the block layout of the iPQ
                      setting), then the same iPQ
  tfmot clustering    the float model clustered with tfmot (2 clusters per layer), fine-tuned for the same
                      ``extra`` + iPQ fine-tuning epochs (4 clusters: seed 0 only)
iPQ accuracy is reported at three centroid fine-tuning budgets: none, short (``short_ft`` epoch per stage) and
full (``finetune`` epoch per stage, 4 stages), as mean and sample standard deviation over seeds, with the
per-seed values and the paired (same seed) difference Quant-Noise minus plain.
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


SEEDS = (0, 1, 2)
SETTINGS = {"K256_d8": {"n_centroids": 256, "block_sizes": {"dense": 8}},
            "K256_d32": {"n_centroids": 256, "block_sizes": {"dense": 32}}}
BUDGETS = ("none", "short", "full")  # centroid fine-tuning per iPQ stage: 0, short_ft, finetune epochs


def _stats(values) -> dict:
    values = [float(v) for v in values]
    return {"values": values, "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def main(out_dir, quick: bool = False, command: str = "") -> dict:
    from tfq_ext import model_size
    from tfq_ext.data import load_fashion_mnist
    from tfq_ext.quant_noise import QuantNoiseCentroidRefresh, add_quant_noise, quantize_pq, to_dense_model
    import tflite_export

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*K clamped.*")
    data = load_fashion_mnist(limit_train=10000 if quick else None)
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    if quick:
        xt, yt = xt[:2000], yt[:2000]
    seeds = SEEDS[:1] if quick else SEEDS
    epochs = 1 if quick else 4
    extra = 1  # epochs of further training, with or without Quant-Noise, before iPQ
    finetune = 0.1 if quick else 0.25  # "full" budget: epochs of centroid fine-tuning after each iPQ stage
    short_ft = 0.02 if quick else 0.05  # "short" budget
    noise = {"noise": "pq", "noise_rate": 0.5, "refresh_every_n_batches": 100}
    budgets = {"none": 0.0, "short": short_ft, "full": finetune}

    per_seed: dict = {}  # name -> list of per-seed dicts

    def record(name, entry):
        per_seed.setdefault(name, []).append(entry)

    float_bytes = None
    export = {}
    for seed in seeds:
        log(f"seed {seed}: float training, {epochs} epochs on {len(x)} images")
        keras.utils.set_random_seed(seed)
        float_model = _train(build_cnn(), x, y, epochs)
        float_bytes = model_size(float_model).bytes
        record("float", {"accuracy": _accuracy(float_model, xt, yt)})
        log(f"  float accuracy {per_seed['float'][-1]['accuracy']:.4f}")

        keras.utils.set_random_seed(seed + 100)
        plain = build_cnn()
        plain.set_weights(float_model.get_weights())
        _train(plain, x, y, extra)
        record("plain_float", {"accuracy": _accuracy(plain, xt, yt)})
        log(f"  plain: +{extra} epoch(s) without noise, "
            f"accuracy {per_seed['plain_float'][-1]['accuracy']:.4f}")

        for setting, kwargs in SETTINGS.items():
            keras.utils.set_random_seed(seed + 100)
            qn_model = add_quant_noise(float_model, noise_rate=noise["noise_rate"], noise=noise["noise"],
                                       block_sizes=kwargs["block_sizes"], n_centroids=kwargs["n_centroids"])
            qn_model.compile(keras.optimizers.Adam(1e-3), _loss())
            qn_model.fit(x, y, batch_size=BATCH, epochs=extra, verbose=0,
                         callbacks=[QuantNoiseCentroidRefresh(noise["refresh_every_n_batches"])])
            record(f"quant_noise_float_{setting}", {"accuracy": _accuracy(qn_model, xt, yt)})
            log(f"  Quant-Noise {setting}: +{extra} epoch(s) with {noise}, accuracy "
                f"{per_seed[f'quant_noise_float_{setting}'][-1]['accuracy']:.4f}")
            for arm, source in (("plain_ipq", plain), ("quant_noise_ipq", qn_model)):
                entry = {}
                for budget, ft in budgets.items():
                    if ft == 0:
                        quantized, stages = quantize_pq(source, loss=_loss(), verbose=0, seed=seed, **kwargs)
                    else:
                        quantized, stages = quantize_pq(
                            source, x, y, finetune_epochs=ft, loss=_loss(), seed=seed, verbose=0,
                            optimizer=lambda: keras.optimizers.Adam(1e-4), **kwargs)
                    entry[f"accuracy_{budget}"] = _accuracy(quantized, xt, yt)
                size = model_size(quantized)
                entry.update(bytes=size.bytes, compression=float_bytes / size.bytes,
                             layers={k: v for s in stages for k, v in s["layers"].items()})
                if arm == "quant_noise_ipq" and setting == "K256_d8" and seed == seeds[0]:
                    dense = to_dense_model(quantized)
                    flatbuffer = tflite_export.convert(dense, representative_data=x[:200], per_channel=False)
                    (out_dir / "quant_noise_pq_int8.tflite").write_bytes(flatbuffer)
                    predicted = np.argmax(tflite_export.run(flatbuffer, xt), 1)
                    export = {"tflite_int8_bytes": len(flatbuffer), "size_table": str(size),
                              "tflite_int8_accuracy": float(np.mean(predicted == yt))}
                record(f"{arm}_{setting}", entry)
                log(f"  {arm} {setting}: accuracy none/short/full "
                    + " / ".join(f"{entry[f'accuracy_{b}']:.4f}" for b in BUDGETS)
                    + f", {entry['bytes']} bytes ({entry['compression']:.1f}x)")

        cluster_epochs = extra + finetune * 4  # the same budget as the iPQ arms after the float model
        for n_clusters in ((2, 4) if seed == seeds[0] else (2,)):
            log(f"  tfmot clustering, {n_clusters} clusters per layer, {cluster_epochs} epoch(s) fine-tuning")
            whole = int(math.ceil(cluster_epochs))
            cluster_x = x[:int(len(x) * cluster_epochs / whole)]
            stripped, ideal, gz, dense_bytes = _tfmot_cluster(float_model, n_clusters, cluster_x,
                                                              y[:len(cluster_x)], whole)
            record(f"tfmot_cluster_{n_clusters}", {
                "accuracy": _accuracy(stripped, xt, yt), "bytes": ideal, "compression": float_bytes / ideal,
                "tflite_gzip_bytes": gz, "tflite_bytes": dense_bytes, "compression_gzip": float_bytes / gz})
            log(f"    accuracy {per_seed[f'tfmot_cluster_{n_clusters}'][-1]['accuracy']:.4f}, "
                f"ideal {ideal} bytes, gzip'd file {gz} bytes")

    results = {}
    for name, entries in per_seed.items():
        row = {k: v for k, v in entries[0].items() if not k.startswith("accuracy")}
        row.setdefault("bytes", float_bytes)
        row.setdefault("compression", 1.0)
        row["seeds"] = list(seeds[:len(entries)])
        for key in entries[0]:
            if key.startswith("accuracy"):
                row[key] = _stats([e[key] for e in entries])
        results[name] = row
    results["quant_noise_ipq_K256_d8"].update(export)
    differences = {}
    for setting in SETTINGS:
        plain_rows, qn_rows = per_seed[f"plain_ipq_{setting}"], per_seed[f"quant_noise_ipq_{setting}"]
        differences[setting] = {
            b: _stats([q[f"accuracy_{b}"] - p[f"accuracy_{b}"] for p, q in zip(plain_rows, qn_rows)])
            for b in BUDGETS}

    report = {"benchmark": "quant_noise_pq", "quick": quick, "command": command,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "tensorflow": tf.__version__},
              "setup": {"train_images": len(x), "test_images": len(xt), "seeds": list(seeds),
                        "epochs": epochs, "extra_epochs": extra, "quant_noise": noise,
                        "finetune_epochs_per_stage": {"none": 0, "short": short_ft, "full": finetune},
                        "tfmot_finetune_epochs": extra + finetune * 4, "settings": SETTINGS},
              "results": results, "differences_quant_noise_minus_plain": differences,
              "seconds": round(time.perf_counter() - t0, 1)}
    (out_dir / "quant_noise_pq.json").write_text(json.dumps(report, indent=2))
    (out_dir / "quant_noise_pq.md").write_text(_table(report))
    _plot(results, out_dir / "quant_noise_pq.png")
    print(_table(report), flush=True)
    return report


def _pct(stat) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def _table(report) -> str:
    results, n = report["results"], len(report["setup"]["seeds"])
    ft = report["setup"]["finetune_epochs_per_stage"]
    lines = [f"Accuracy (%) on the Fashion-MNIST test set, mean ± sample standard deviation over {n} seed(s) "
             f"{report['setup']['seeds']}. iPQ centroid fine-tuning per stage (4 stages): none, short "
             f"{ft['short']} epoch, full {ft['full']} epoch.", "",
             "| arm | bytes | compression vs float32 | no fine-tune | short fine-tune "
             "| full fine-tune / accuracy |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in results.items():
        if "accuracy_none" in row:
            cells = [_pct(row[f"accuracy_{b}"]) for b in BUDGETS]
        else:
            cells = ["-", "-", _pct(row["accuracy"])]
        seeds = "" if len(row["seeds"]) == n else f" (seed {', '.join(map(str, row['seeds']))} only)"
        lines.append(f"| {name}{seeds} | {row['bytes']} | {row['compression']:.1f}x | "
                     + " | ".join(cells) + " |")
    lines += ["", "Quant-Noise + iPQ minus plain iPQ, paired by seed (points; mean ± standard deviation; "
              "per seed):", "",
              "| setting | no fine-tune | short fine-tune | full fine-tune |", "|---|---:|---:|---:|"]
    for setting, diffs in report["differences_quant_noise_minus_plain"].items():
        cells = [f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f} ("
                 + ", ".join(f"{100 * v:+.2f}" for v in d["values"]) + ")"
                 for d in (diffs[b] for b in BUDGETS)]
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    seed_columns = " | ".join(f"seed {s}" for s in report["setup"]["seeds"])
    lines += ["", "Per-seed accuracies (%):", "", f"| arm | {seed_columns} |", "|---|" + "---:|" * n]
    for name, row in results.items():
        for key in [k for k in row if k.startswith("accuracy")]:
            budget = {"none": "no", "short": "short", "full": "full"}.get(key[len("accuracy_"):], "")
            label = name if key == "accuracy" else f"{name}, {budget} fine-tune"
            lines.append(f"| {label} | " + " | ".join(f"{100 * v:.2f}" for v in row[key]["values"]) + " |")
    extra = results.get("quant_noise_ipq_K256_d8", {})
    lines.append("")
    if "tflite_int8_bytes" in extra:
        lines.append(f"Quant-Noise + iPQ (K256_d8, seed {report['setup']['seeds'][0]}, full fine-tune) as a "
                     f"dense per-tensor int8 .tflite: {extra['tflite_int8_bytes']} bytes, accuracy "
                     f"{100 * extra['tflite_int8_accuracy']:.2f}%.")
    for n_clusters in (2, 4):
        row = results.get(f"tfmot_cluster_{n_clusters}")
        if row:
            lines.append(f"tfmot clustering ({n_clusters} clusters, seed {row['seeds'][0]}): the shipped "
                         f"float32 .tflite is {row['tflite_bytes']} bytes, {row['tflite_gzip_bytes']} after "
                         f"gzip ({row['compression_gzip']:.1f}x).")
    lines.append(f"\nWall time: {report['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def _plot(results, path) -> None:
    """Accuracy vs size, mean ± std over seeds; filled markers after full fine-tuning, hollow ones before."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = {"float": ("k", "*", "float32 (4 epochs)"),
              "plain_float": ("tab:blue", "*", "float32 (5 epochs)"),
              "plain_ipq": ("tab:blue", "o", "plain training -> iPQ"),
              "quant_noise_ipq": ("tab:red", "s", "Quant-Noise (pq, p=0.5) -> iPQ"),
              "tfmot_cluster": ("tab:green", "^", "tfmot clustering (ideal packed size)")}
    seen = set()
    for name, row in results.items():
        key = next((k for k in sorted(styles, key=len, reverse=True) if name.startswith(k)), None)
        if key is None:
            continue
        color, marker, label = styles[key]
        kib = row["bytes"] / 1024
        final = row.get("accuracy_full", row.get("accuracy"))
        ax.errorbar(kib, 100 * final["mean"], yerr=100 * final["std"], color=color, marker=marker, ms=8,
                    capsize=3, label=None if key in seen else label, linestyle="none")
        seen.add(key)
        if "accuracy_none" in row:
            before = row["accuracy_none"]
            ax.errorbar(kib, 100 * before["mean"], yerr=100 * before["std"], color=color, marker=marker, ms=8,
                        mfc="none", capsize=3, linestyle="none")
            ax.plot([kib, kib], [100 * before["mean"], 100 * final["mean"]], color=color, alpha=0.3)
        if name.startswith(("plain_ipq", "tfmot")):
            ax.annotate(name.split("_")[-1] if "ipq" in name else name.split("_")[-1] + " clusters",
                        (kib, 100 * final["mean"]), fontsize=7, xytext=(6, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("model size (KiB, log scale; indices + codebooks + float32 rest)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("iPQ with and without Quant-Noise vs tfmot clustering, mean ± std over seeds\n"
                 "(hollow: iPQ before centroid fine-tuning; filled: after)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(out_dir) -> None:
    """Redraws the PNG from the saved JSON (no training)."""
    out_dir = Path(out_dir)
    _plot(json.loads((out_dir / "quant_noise_pq.json").read_text())["results"], out_dir / "quant_noise_pq.png")
