"""Kernel codebooks (KQ) vs scalar clustering and binary / ternary weights at the same bits per conv weight.

A plain Keras CNN with 3x3 convs (32-32-pool-64-64-GAP-Dense, no tfq_ext at training time) is trained on
Fashion-MNIST, then compressed by:
  KQ                  ``tfq_ext.kq.quantize_kernels`` at several budgets (bits per conv weight, everything counted)
  tfmot clustering    ``tfmot.clustering.keras.cluster_weights`` with 2 or 4 clusters per conv layer
  binary / ternary    per-output-channel binary (XNOR-Net style, alpha = mean|w|) and ternary (TWN: threshold
                      0.7 mean|w|) conv weights, straight-through fine-tuning (``tfq_ext.ops.fake_quant_affine``)
Every arm fine-tunes the same number of steps with the same optimizer and schedule, trains the other layers
too, and leaves the first conv (32 kernels, 1 input channel) as it is, counted at int8 (8 bits per weight plus
a float32 scale), as KQ does. Bits per conv weight of the baselines: tfmot: ceil(log2 C) per weight + C float32
centroids per layer; binary: 1 bit + one float32 scale per output channel; ternary: 1.6 bits (5 ternary digits
per byte) + one float32 scale per output channel.

Run with ``python -m benchmarks.run --only kq [--quick]``.

References: Yu et al. 2020, arXiv 2003.05148 (KQ); Rastegari et al. 2016, arXiv 1603.05279 (XNOR-Net);
Li et al. 2016, arXiv 1605.04711 (TWN).
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from tfq_ext._keras import keras, tf

SEED = 0
BATCH = 128
CONV_NAMES = ("conv1", "conv2", "conv3", "conv4")
KEPT = ("conv1",)  # 32 kernels: left as it is by every arm (KQ's min_kernels rule), counted at int8
_EVAL = (None, None)  # test split, set by main() so that the arms can report accuracy before fine-tuning


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_cnn(conv=None) -> keras.Model:
    """The benchmark CNN; ``conv(name, filters, strides)`` may substitute the conv layers."""
    layers = keras.layers
    make = conv or (lambda name, filters, strides=1: layers.Conv2D(filters, 3, strides=strides, padding="same",
                                                                   activation="relu", name=name))
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        make("conv1", 32, 2), make("conv2", 32), layers.MaxPooling2D(),
        make("conv3", 64), make("conv4", 64),
        layers.GlobalAveragePooling2D(), layers.Dense(10, name="logits"),
    ], name="fmnist_kq_cnn")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _optimizer(lr: float, steps: int):
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, max(1, steps)))


def _accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=1000, verbose=0), axis=1) == y))


class _SteConv2D(keras.layers.Conv2D):
    """Conv2D whose kernel is binarized or ternarized per output channel in every forward (benchmark baseline).

    Binary: alpha * sign(w), alpha = mean|w| per output channel; clipped STE (|w| < 2 alpha).
    Ternary (TWN): alpha * {-1, 0, 1} with threshold delta = 0.7 mean|w| and alpha = mean of |w| above it;
    clipped STE (|w| < 3 delta). Scales are statistics of the latent weights (no gradient through them).
    """

    def __init__(self, *args, mode: str = "binary", **kwargs):
        super().__init__(*args, **kwargs)
        if mode not in ("binary", "ternary"):
            raise ValueError(f"`mode` must be 'binary' or 'ternary'. Received: mode={mode!r}")
        self.mode = mode

    def quantized_kernel(self, kernel):
        from tfq_ext.ops.fake_quant import fake_quant_affine

        mean_abs = tf.stop_gradient(tf.reduce_mean(tf.abs(kernel), axis=(0, 1, 2)))
        if self.mode == "binary":
            # {0, 1} codes of (w + alpha) / (2 alpha), shifted back by alpha: sign(w) * alpha.
            return fake_quant_affine(kernel + mean_abs, 2.0 * mean_abs, 0.0, 0, 1) - mean_abs
        delta = 0.7 * mean_abs
        above = tf.cast(tf.abs(kernel) > delta, kernel.dtype)
        alpha = tf.stop_gradient(tf.reduce_sum(tf.abs(kernel) * above, axis=(0, 1, 2))
                                 / tf.maximum(tf.reduce_sum(above, axis=(0, 1, 2)), 1.0))
        return fake_quant_affine(kernel, 2.0 * delta, 0.0, -1, 1) * (alpha / (2.0 * delta))

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, self.quantized_kernel(kernel))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _conv_weights(model) -> dict:
    return {name: int(np.prod(model.get_layer(name).kernel.shape)) for name in CONV_NAMES}


def _kept_bits(weights: dict) -> int:
    return sum(8 * weights[name] + 32 for name in KEPT)


def _ste_arm(float_model, mode, x, y, steps, lr):
    def conv(name, filters, strides=1):
        cls = _SteConv2D if name not in KEPT else keras.layers.Conv2D
        extra = {"mode": mode} if name not in KEPT else {}
        return cls(filters, 3, strides=strides, padding="same", activation="relu", name=name, **extra)

    model = build_cnn(conv)
    model.set_weights(float_model.get_weights())
    model.compile(_optimizer(lr, steps), _loss(), metrics=["accuracy"])
    before = _accuracy(model, *_EVAL)
    _fit_steps(model, x, y, steps)
    weights = _conv_weights(model)
    per_weight = 1.0 if mode == "binary" else 1.6
    bits = _kept_bits(weights) + sum(per_weight * weights[n] + 32 * model.get_layer(n).filters
                                     for n in CONV_NAMES if n not in KEPT)
    return model, bits / sum(weights.values()), before


def _tfmot_arm(float_model, n_clusters, x, y, steps, lr, per_channel=False):
    import tensorflow_model_optimization as tfmot

    clustering = tfmot.clustering.keras
    clone = keras.models.clone_model(float_model)
    clone.set_weights(float_model.get_weights())  # tfmot wraps the clone's layers; the float model stays intact

    def wrap(layer):
        if layer.name in CONV_NAMES and layer.name not in KEPT:
            return clustering.cluster_weights(
                layer, number_of_clusters=n_clusters, cluster_per_channel=per_channel,
                cluster_centroids_init=clustering.CentroidInitialization.KMEANS_PLUS_PLUS)
        return layer

    clustered = keras.models.clone_model(clone, clone_function=wrap)
    clustered.compile(_optimizer(lr, steps), _loss(), metrics=["accuracy"])
    before = _accuracy(clustering.strip_clustering(clustered), *_EVAL)
    _fit_steps(clustered, x, y, steps)
    stripped = clustering.strip_clustering(clustered)
    weights = _conv_weights(stripped)
    index = math.ceil(math.log2(n_clusters))
    tables = {n: n_clusters * (stripped.get_layer(n).filters if per_channel else 1) for n in CONV_NAMES}
    bits = _kept_bits(weights) + sum(index * weights[n] + 32 * tables[n] for n in CONV_NAMES if n not in KEPT)
    kernels = [stripped.get_layer(n).kernel.numpy() for n in CONV_NAMES if n not in KEPT]
    distinct = max(len(np.unique(k[..., o])) for k in kernels for o in range(k.shape[-1])) if per_channel \
        else max(len(np.unique(k)) for k in kernels)
    return stripped, bits / sum(weights.values()), distinct, before


def _fit_steps(model, x, y, steps):
    """``steps`` optimizer steps on a seeded random order of (x, y) (more than one pass if needed)."""
    order = np.random.default_rng(SEED).permutation(len(x))
    need = steps * BATCH
    order = np.concatenate([order] * (need // len(x) + 1))[:need]
    model.fit(x[order], y[order], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def main(out_dir, quick: bool = False, command: str = "") -> dict:
    import tflite_export
    from tfq_ext.data import load_fashion_mnist
    from tfq_ext.kq import quantize_kernels, to_dense_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_fashion_mnist(limit_train=6000 if quick else None)
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    if quick:
        xt, yt = xt[:2000], yt[:2000]
    global _EVAL
    _EVAL = (xt, yt)
    epochs = 1 if quick else 8
    finetune_steps = 20 if quick else len(x) // BATCH  # one epoch for every arm
    budgets = (1.0, 1.7) if quick else (1.0, 1.3, 1.7, 2.0)
    lr, finetune_lr = 3e-3, 1e-3

    log(f"float training: {epochs} epochs on {len(x)} images")
    keras.utils.set_random_seed(SEED)
    float_model = build_cnn()
    float_model.compile(_optimizer(lr, epochs * math.ceil(len(x) / BATCH)), _loss(), metrics=["accuracy"])
    float_model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    weights = _conv_weights(float_model)
    results = {"float": {"method": "float", "bits_per_conv_weight": 32.0, "accuracy": _accuracy(float_model, xt, yt)}}
    log(f"  float accuracy {results['float']['accuracy']:.4f} ({sum(weights.values())} conv weights)")

    for budget in budgets:
        log(f"KQ at a budget of {budget} bits per conv weight, {finetune_steps} fine-tuning steps")
        keras.utils.set_random_seed(SEED)
        kq, report = quantize_kernels(float_model, x[:finetune_steps * BATCH], y[:finetune_steps * BATCH],
                                      bits_per_weight=budget, finetune_epochs=1, batch_size=BATCH,
                                      optimizer=_optimizer(finetune_lr, finetune_steps), loss=_loss(),
                                      validation_data=(xt, yt), seed=SEED, verbose=0)
        entry = {"method": "kq", "budget": budget, "levels": "K " + "/".join(str(row["K"]) for row in
                                                                           report["layers"].values()), "bits_per_conv_weight": report["bits_per_conv_weight"],
                 "accuracy_before_finetune": report["accuracy_before_finetune"],
                 "accuracy": report["accuracy_after_finetune"],
                 "K": {name: row["K"] for name, row in report["layers"].items()},
                 "conv_bits": report["conv_bits"]["layers"]}
        if budget == 1.7 or (quick and budget == budgets[-1]):
            entry.update(_export(to_dense_model(kq), x, xt, yt, out_dir, tflite_export))
        results[f"kq_{budget}"] = entry
        log(f"  {entry['bits_per_conv_weight']:.3f} bits, K {entry['K']}: accuracy "
            f"{entry['accuracy_before_finetune']:.4f} -> {entry['accuracy']:.4f}")

    for n_clusters, per_channel in ((2, False), (4, False), (2, True)):
        name = f"tfmot_cluster_{n_clusters}" + ("_per_channel" if per_channel else "")
        log(f"tfmot clustering, {n_clusters} clusters per conv {'channel' if per_channel else 'layer'}, "
            f"{finetune_steps} steps")
        keras.utils.set_random_seed(SEED)
        model, bits, distinct, before = _tfmot_arm(float_model, n_clusters, x, y, finetune_steps, finetune_lr,
                                                   per_channel)
        results[name] = {"method": "tfmot clustering" + (" per channel" if per_channel else ""),
                         "bits_per_conv_weight": bits, "accuracy_before_finetune": before,
                         "accuracy": _accuracy(model, xt, yt), "levels": f"{n_clusters} per "
                         + ("channel" if per_channel else "layer"), "distinct_values_max": distinct}
        log(f"  {bits:.3f} bits: accuracy {before:.4f} -> {results[name]['accuracy']:.4f}")
    for mode in ("binary", "ternary"):
        log(f"{mode} conv weights with STE, {finetune_steps} steps")
        keras.utils.set_random_seed(SEED)
        model, bits, before = _ste_arm(float_model, mode, x, y, finetune_steps, finetune_lr)
        results[mode] = {"method": f"{mode} (STE)", "bits_per_conv_weight": bits, "accuracy_before_finetune": before,
                         "accuracy": _accuracy(model, xt, yt),
                         "levels": f"{2 if mode == 'binary' else 3} per channel"}
        log(f"  {bits:.3f} bits: accuracy {before:.4f} -> {results[mode]['accuracy']:.4f}")

    report = {"benchmark": "kq", "quick": quick, "command": command,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "tensorflow": tf.__version__},
              "setup": {"train_images": len(x), "test_images": len(xt), "float_epochs": epochs,
                        "finetune_steps": finetune_steps, "batch_size": BATCH, "float_lr": lr,
                        "finetune_lr": finetune_lr, "codebook_bits": 6, "conv_weights": weights,
                        "kept_layers": list(KEPT)},
              "results": results, "seconds": round(time.perf_counter() - t0, 1)}
    (out_dir / "kq.json").write_text(json.dumps(report, indent=2))
    (out_dir / "kq.md").write_text(_table(report))
    _plot(report, out_dir / "kq.png")
    print(_table(report), flush=True)
    return report


def _export(dense, x, xt, yt, out_dir, tflite_export) -> dict:
    """int8 TFLite of the KQ model (per-tensor weights), and the codebook-compressed file when available."""
    flatbuffer = tflite_export.convert(dense, representative_data=x[:200], per_channel=False)
    (out_dir / "kq_int8.tflite").write_bytes(flatbuffer)
    out = {"tflite_int8_bytes": len(flatbuffer),
           "tflite_int8_accuracy": float(np.mean(np.argmax(tflite_export.run(flatbuffer, xt), 1) == yt))}
    compress = getattr(tflite_export, "compress", None)
    if compress is not None:
        compressed = compress(flatbuffer)
        out["tflite_compressed_bytes"] = len(compressed)
        decompress = getattr(tflite_export, "decompress", None)
        if decompress is not None:
            out["tflite_compressed_accuracy"] = float(np.mean(
                np.argmax(tflite_export.run(decompress(compressed), xt), 1) == yt))
    return out


def _table(report) -> str:
    results = report["results"]
    float_acc = results["float"]["accuracy"]
    header = ("| arm | bits per conv weight | codewords / levels | accuracy before fine-tune (%) | accuracy (%) "
              "| vs float (points) |")
    lines = [header, "|---|---:|---|---:|---:|---:|"]
    for name, row in sorted(results.items(), key=lambda kv: -kv[1]["bits_per_conv_weight"]):
        before = row.get("accuracy_before_finetune")
        label = name if row["method"] != "kq" else f"KQ, budget {row['budget']}"
        lines.append(f"| {label} | {row['bits_per_conv_weight']:.3f} | {row.get('levels', '-')} | "
                     f"{'-' if before is None else f'{100 * before:.2f}'} | {100 * row['accuracy']:.2f} | "
                     f"{100 * (row['accuracy'] - float_acc):+.2f} |")
    setup = report["setup"]
    lines.append(f"\nFashion-MNIST, {setup['train_images']} training / {setup['test_images']} test images; float "
                 f"model {setup['float_epochs']} epochs; every arm {setup['finetune_steps']} fine-tuning steps "
                 f"(batch {setup['batch_size']}, Adam {setup['finetune_lr']:g} cosine); conv1 kept at int8 in "
                 f"every arm and counted. {report['seconds']:.0f} s in total.")
    for row in results.values():
        if "tflite_int8_bytes" in row:
            text = (f"KQ (budget {row['budget']}) as a full-int8 per-tensor .tflite: {row['tflite_int8_bytes']} bytes, "
                    f"accuracy {100 * row['tflite_int8_accuracy']:.2f}")
            if "tflite_compressed_bytes" in row:
                text += f"; `tflite_export.compress`: {row['tflite_compressed_bytes']} bytes"
                if "tflite_compressed_accuracy" in row:
                    text += f" (decompressed accuracy {100 * row['tflite_compressed_accuracy']:.2f})"
            lines.append(text + ".")
    return "\n".join(lines) + "\n"


def _plot(report, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhline(100 * results["float"]["accuracy"], color="k", ls="--", lw=1, label="float (32 bits)")
    kq = sorted((r for r in results.values() if r["method"] == "kq"), key=lambda r: r["bits_per_conv_weight"])
    ax.plot([r["bits_per_conv_weight"] for r in kq], [100 * r["accuracy"] for r in kq], "o-", color="tab:red",
            label="KQ (fine-tuned)")
    styles = {"tfmot clustering": ("tab:green", "^"), "tfmot clustering per channel": ("tab:olive", "v"),
              "binary (STE)": ("tab:blue", "s"),
              "ternary (STE)": ("tab:purple", "D")}
    # A collapsed arm would squash the interesting range: clip the axis and mark those arms at the bottom edge.
    bottom = 100 * min(r["accuracy"] for r in kq) - 4
    off_scale = 0
    for method, (color, marker) in styles.items():
        rows = [r for r in results.values() if r["method"] == method]
        for row in rows:
            accuracy = 100 * row["accuracy"]
            shown = max(accuracy, bottom + 0.3)
            ax.scatter(row["bits_per_conv_weight"], shown, color=color, marker=marker, s=60, zorder=3,
                       label=method if row is rows[0] else None)
            text = row.get("levels", "") + (f" ({accuracy:.1f}%, off scale)" if accuracy < bottom else "")
            off_scale += accuracy < bottom
            ax.annotate(text, (row["bits_per_conv_weight"], shown), fontsize=7,
                        xytext=(4, 4 + (12 * off_scale if accuracy < bottom else 0)), textcoords="offset points")
    ax.set_ylim(bottom, 100 * results["float"]["accuracy"] + 1)
    ax.set_xlabel("bits per conv weight (indices + codebooks + scales + kept conv1, all counted)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("Kernel codebooks (KQ) vs scalar clustering and binary/ternary weights")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
