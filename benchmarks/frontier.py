"""The size/accuracy frontier of ``tfq_ext.compress_model`` next to the peers' options, on the same trained models.

Models (Fashion-MNIST, trained here from scratch): the compact conv-BN CNN of ``benchmarks/qat_vs_tfmot.py``
(28x28x1, 56k weights, all but 650 in 3x3 convolutions), the classic conv-conv-dense CNN of
``benchmarks/diffq.py`` (421k weights, 95% in its 3136x128 dense layer: the over-parameterized shape of most
deployed classifiers' heads) and MobileNetV2 (alpha 0.35, 32x32 RGB resize, ``weights=None``) as the
MobileNet-class model.

Peers on the same float model: tfmot QAT int8; tfmot weight clustering (4 and 16 clusters, fine-tuned, stripped,
then post-training full int8 by the TFLite converter), reported at file size and at gzip size (what tfmot's
guide compares); ai-edge-quantizer's recipes on the float32 file (int8 dynamic, int8 static, int4 weight-only,
int4 blockwise-32 dynamic); Keras 3's ``model.quantize("int8")`` + TFLite conversion (a row with its error when
it fails). Every accuracy is the file's, run in ai-edge-litert on the validation images; every latency is
XNNPACK, 1 thread, batch 1, interleaved with the float32 file (median of rounds); partitions beside each.

Run with ``python -m benchmarks.run --only frontier [--quick]``.
"""

from __future__ import annotations

import datetime
import gzip
import json
import math
import os
import platform
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from tfq_ext._keras import keras, tf

MODELS = ("fmnist_cnn", "fmnist_cnn_fc", "mobilenet_v2")
SIZES = {  # train images, float epochs, fine-tune epochs per candidate, batch
    "fmnist_cnn": (30000, 15, 2, 128),
    "fmnist_cnn_fc": (30000, 15, 2, 128),
    "mobilenet_v2": (20000, 10, 1, 128),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _data(name: str, quick: bool):
    from tfq_ext.data import load_fashion_mnist

    split = load_fashion_mnist()
    n_train = 2000 if quick else SIZES[name][0]
    n_val = 500 if quick else 5000
    x_train, y_train = split.x_train[:n_train], split.y_train[:n_train]
    x_val, y_val = split.x_test[:n_val], split.y_test[:n_val]
    if name == "mobilenet_v2":
        def prepare(x):
            return np.repeat(tf.image.resize(x, (32, 32)).numpy(), 3, axis=-1).astype("float32")

        x_train, x_val = prepare(x_train), prepare(x_val)
    return x_train, y_train.astype("int64"), x_val, y_val.astype("int64")


def _build(name: str):
    if name == "fmnist_cnn":
        from benchmarks.qat_vs_tfmot import build_cnn

        return build_cnn()
    if name == "fmnist_cnn_fc":
        from benchmarks.diffq import build_cnn as build_cnn_fc

        return build_cnn_fc()
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                           classifier_activation=None)
    # keras.applications' BatchNormalization momentum is 0.999: after the ~1600 steps trained here the moving
    # statistics still hold a fifth of their initial values and the inference model is at chance (measured:
    # 0.096). 0.99 lets them follow the training.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.99
    return model


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _accuracy(content: bytes, x, y) -> float:
    import tflite_export

    return float(np.mean(np.argmax(tflite_export.run(content, x), axis=-1) == y))


def _peer_row(name: str, content: bytes | None, x_val, y_val, error: str | None = None, **extra) -> dict:
    import tflite_export

    if content is None:
        return {"name": name, "status": "failed", "error": error, **extra}
    delegation = tflite_export.delegation_report(content)
    return {"name": name, "status": "ok", "bytes": len(content), "gzip_bytes": len(gzip.compress(content, 9)),
            "accuracy": _accuracy(content, x_val, y_val), "partitions": delegation["delegate_partitions"],
            "nodes_outside": len(delegation["not_delegated"]),
            "outside_ops": sorted(set(delegation["not_delegated"])), **extra}


def _tfmot_clustering(model, clusters: int, x, y, epochs: int, batch: int) -> bytes:
    import tensorflow_model_optimization as tfmot
    import tflite_export

    cluster = tfmot.clustering.keras
    fresh = keras.models.clone_model(model)  # cluster_weights changes the layers it is given
    fresh.set_weights(model.get_weights())
    clustered = cluster.cluster_weights(
        fresh, number_of_clusters=clusters,
        cluster_centroids_init=cluster.CentroidInitialization.KMEANS_PLUS_PLUS)
    steps = epochs * -(-len(x) // batch)  # the candidates' fine-tune: Adam, cosine decay from 5e-4
    clustered.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(5e-4, steps)), _loss())
    clustered.fit(x, y, batch_size=batch, epochs=epochs, verbose=2)
    stripped = cluster.strip_clustering(clustered)
    return tflite_export.convert(stripped, representative_data=x[:256])


def _ai_edge_quantizer(float_file: bytes, recipe_name: str, x) -> bytes:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(float_file)
    qt.load_quantization_recipe(getattr(recipe, recipe_name)())
    calibration = None
    if qt.need_calibration:
        signatures = Interpreter(model_content=float_file).get_signature_list()
        key = next(iter(signatures))
        input_name = signatures[key]["inputs"][0]
        calibration = qt.calibrate({key: [{input_name: x[i:i + 1]} for i in range(min(200, len(x)))]})
    return bytes(qt.quantize(calibration, enable_progress_report=False).quantized_model)


def _build_keras3(name: str):
    import keras as keras3

    if name == "fmnist_cnn":
        L = keras3.layers
        inp = keras3.Input((28, 28, 1), name="image")
        x = inp
        for filters, pool in ((32, True), (64, True), (64, False)):
            x = L.ReLU()(L.BatchNormalization()(L.Conv2D(filters, 3, padding="same", use_bias=False)(x)))
            x = L.MaxPooling2D()(x) if pool else x
        return keras3.Model(inp, L.Dense(10, name="logits")(L.GlobalAveragePooling2D()(x)))
    if name == "fmnist_cnn_fc":
        L = keras3.layers
        return keras3.Sequential([keras3.Input((28, 28, 1)), L.Conv2D(32, 3, padding="same", activation="relu"),
                                  L.MaxPooling2D(), L.Conv2D(64, 3, padding="same", activation="relu"),
                                  L.MaxPooling2D(), L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10)])
    return keras3.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                           classifier_activation=None)


def _keras3_int8(name: str, model) -> bytes:
    """Keras 3's own int8 quantization of the same architecture with the same weights, then TFLite conversion."""
    import keras as keras3

    if not keras3.__version__.startswith("3"):
        raise RuntimeError(f"Keras 3 not installed (keras {keras3.__version__})")
    k3 = _build_keras3(name)
    k3.set_weights(model.get_weights())
    k3.quantize("int8")
    return tf.lite.TFLiteConverter.from_keras_model(k3).convert()


# Files timed twice in the latency run (a second interpreter of the same bytes, timed last in each round): the
# gap between the two medians of one file is the run's own latency noise.
NOISE_COPIES = ("float32", "ptq_int8", "aeq_static_wi8_ai8")


def _latency_noise(timing: dict) -> dict:
    """Relative gap between the two medians of each file timed twice, and the largest of them."""
    gaps = {}
    for name in NOISE_COPIES:
        a, b = timing["models"].get(name), timing["models"].get(f"copy:{name}")
        if a and b:
            gaps[name] = abs(a["median_ms"] - b["median_ms"]) / min(a["median_ms"], b["median_ms"])
    return {"per_file": gaps, "max": max(gaps.values()) if gaps else None}


def _dominance(candidates: list[dict], peers: list[dict], latency_tolerance: float) -> list[dict]:
    """For each peer file: the tfq_ext files no larger, no less accurate and no slower (strictly, and within
    ``latency_tolerance``, the run's measured noise)."""
    rows = []
    ours = [c for c in candidates if c["status"] == "ok" and not c.get("reference")]
    for p in peers:
        if p.get("status") != "ok":
            continue
        strict = [c["name"] for c in ours if c["bytes"] <= p["bytes"] and c["accuracy"] >= p["accuracy"]
                  and c["latency_ms"] <= p["latency_ms"]]
        tolerant = [c["name"] for c in ours if c["bytes"] <= p["bytes"] and c["accuracy"] >= p["accuracy"]
                    and c["latency_ms"] <= p["latency_ms"] * (1 + latency_tolerance)]
        at_gzip = [c["name"] for c in ours if c["bytes"] <= p["gzip_bytes"] and c["accuracy"] >= p["accuracy"]]
        rows.append({"peer": p["name"], "dominated_by": strict, "dominated_within_latency_noise": tolerant,
                     "no_larger_than_peer_gzip_and_as_accurate": at_gzip})
    return rows


def run_model(name: str, quick: bool, out_dir: Path) -> dict:
    import tflite_export
    from tfq_ext.compress import METHODS, compress_model

    n_train, float_epochs, epochs, batch = SIZES[name]
    if quick:
        float_epochs, epochs = 1, 0.25
    x, y, xv, yv = _data(name, quick)
    log(f"{name}: training float ({len(x)} images, {float_epochs} epochs)")
    keras.utils.set_random_seed(0)
    model = _build(name)
    # Cosine decay to 0: the last epochs settle, so the float reference is not one noisy epoch's weights
    # (with a constant rate this CNN's validation accuracy moved between 0.80 and 0.88 from epoch to epoch).
    steps = float_epochs * -(-len(x) // batch)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)), _loss(),
                  metrics=["accuracy"])
    t0, rss0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.fit(x, y, batch_size=batch, epochs=float_epochs, verbose=2)
    float_seconds = time.perf_counter() - t0

    log(f"{name}: compress_model (every method + the tfmot QAT reference)")
    files_dir = Path(tempfile.mkdtemp(prefix=f"frontier_{name}_"))  # the files are measured, not committed
    result = compress_model(model, (x, y), (xv, yv), methods=list(METHODS), out_dir=files_dir, epochs=epochs, batch_size=batch, latency_rounds=0, verbose=1)
    report = result.to_dict()

    log(f"{name}: same-budget float (the float model trained {epochs} more epochs, as each candidate is)")
    extra = keras.models.clone_model(model)
    extra.set_weights(model.get_weights())
    extra.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        5e-4, max(1, int(math.ceil(epochs * len(x) / batch))))), _loss())
    whole = int(epochs)
    if whole:
        extra.fit(x, y, batch_size=batch, epochs=whole, verbose=2)
    if epochs - whole > 1e-9:
        n = int(round((epochs - whole) * len(x)))
        extra.fit(x[:n], y[:n], batch_size=batch, epochs=1, verbose=2)
    same_budget_file = tf.lite.TFLiteConverter.from_keras_model(extra).convert()
    same_budget = {"accuracy": _accuracy(same_budget_file, xv, yv), "bytes": len(same_budget_file),
                   "extra_epochs": epochs}

    log(f"{name}: peers")
    float_file = (files_dir / "float32.tflite").read_bytes()
    peers, peer_files = [], {}
    for clusters in (4, 16):
        label = f"tfmot_cluster{clusters}_int8"
        try:
            content = _tfmot_clustering(model, clusters, x, y, max(1, int(round(epochs))), batch)
            peers.append(_peer_row(label, content, xv, yv, method="tfmot clustering + int8"))
            peer_files[label] = content
            (files_dir / f"peer_{label}.tflite").write_bytes(content)
        except Exception as exc:  # noqa: BLE001 - a peer failing is a result
            peers.append(_peer_row(label, None, xv, yv, f"{type(exc).__name__}: {exc}"[:500]))
    for recipe_name in ("dynamic_wi8_afp32", "static_wi8_ai8", "weight_only_wi4_afp32", "dynamic_wi4b32_afp32"):
        label = f"aeq_{recipe_name}"
        try:
            content = _ai_edge_quantizer(float_file, recipe_name, x)
            peers.append(_peer_row(label, content, xv, yv, method="ai-edge-quantizer"))
            peer_files[label] = content
            (files_dir / f"peer_{label}.tflite").write_bytes(content)
        except Exception as exc:  # noqa: BLE001
            peers.append(_peer_row(label, None, xv, yv, f"{type(exc).__name__}: {exc}"[:500],
                                   method="ai-edge-quantizer"))
    try:
        content = _keras3_int8(name, model)
        peers.append(_peer_row("keras3_quantize_int8", content, xv, yv, method="Keras 3 model.quantize"))
        peer_files["keras3_quantize_int8"] = content
    except Exception as exc:  # noqa: BLE001
        peers.append(_peer_row("keras3_quantize_int8", None, xv, yv, f"{type(exc).__name__}: {exc}"[:500],
                               method="Keras 3 model.quantize"))

    log(f"{name}: latency, every file interleaved with float32 (XNNPACK, 1 thread)")
    ours = {c["name"]: (files_dir / c["file"]).read_bytes() for c in report["candidates"] if c["status"] == "ok"}
    loaded = {k: tflite_export.decompress(v) if tflite_export.is_compressed(v) else v for k, v in ours.items()}
    timed = {"float32": float_file, **loaded, **peer_files}
    timed.update({f"copy:{k}": timed[k] for k in NOISE_COPIES if k in timed})
    # A round costs a few milliseconds per file at these sizes, so 200 rounds are cheap (15 left a 3.6% spread
    # between files that run the same int8 kernels); the copies record how far one file's medians still move.
    timing = tflite_export.compare_latency(timed, rounds=5 if quick else 200, runs_per_round=10, num_threads=1)
    noise = _latency_noise(timing)
    report["float"]["latency_ms"] = timing["models"]["float32"]["median_ms"]
    for c in report["candidates"]:
        if c["name"] in timing["models"]:
            c["latency_ms"] = timing["models"][c["name"]]["median_ms"]
            c["gzip_bytes"] = len(gzip.compress(ours[c["name"]], 9))
    for p in peers:
        if p["name"] in timing["models"]:
            p["latency_ms"] = timing["models"][p["name"]]["median_ms"]
    best_small = [c for c in report["candidates"] if c["status"] == "ok" and not c.get("reference")
                  and c["accuracy"] >= report["float"]["accuracy"] - 0.01]
    smallest = min(best_small, key=lambda c: c["bytes"]) if best_small else None
    return {"model": name, "same_budget_float": same_budget, "train_images": len(x), "validation_images": len(xv), "float_epochs": float_epochs,
            "float_train_seconds": round(float_seconds, 1), "compress": report, "peers": peers,
            "latency_noise": noise, "files_dir": str(files_dir),
            "dominance": _dominance(report["candidates"],
                                    [dict(c, name=c["name"]) for c in report["candidates"] if c.get("reference")
                                     and c["status"] == "ok"] + peers, noise["max"] or 0.0),
            "smallest_within_1_point": None if smallest is None else {
                "name": smallest["name"], "bytes": smallest["bytes"],
                "x_smaller_than_float32": report["float"]["bytes"] / smallest["bytes"],
                "partitions": smallest["partitions"]},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "rss_at_start_mb": rss0 / 1024.0}


def _cpu() -> str:
    """The CPU model and its int8 dot-product extensions: XNNPACK's int8 kernels are much faster with VNNI, so
    int8-vs-float32 latency differs between machines."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{model} ({os.cpu_count()} CPUs; {' '.join(wanted) or 'no AVX2'})"


def _fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    lines = ["# Size/accuracy frontier: `tfq_ext.compress_model` vs the peers", "",
             "Commands (a model's entry is kept when another model is rerun with `--models`): " + "; ".join(
                 f"{m['model']}: `{m.get('command', result['command'])}` ({m.get('date', result['date'])}"
                 + (f", {m['seconds']:.0f} s" if m.get("seconds") else "") + f"; {m.get('machine', result['machine'])})"
                 for m in result["models"].values()) + ".",
             "Accuracy: each file run in ai-edge-litert on the validation images (Fashion-MNIST test images); "
             "latency: XNNPACK, 1 thread, batch 1, all files of a model interleaved, median of rounds of 10 "
             "invokes (a compressed file after loading); bytes: the file on disk.", ""]
    for m in result["models"].values():
        f = m["compress"]["float"]
        lines += [f"## {m['model']} ({m['train_images']} train images, {m['float_epochs']} float epochs, "
                  f"{m['validation_images']} validation images)", "",
                  "| file | method | accuracy | bytes | gzip bytes | x smaller than fp32 | latency ms | partitions | "
                  "frontier |", "|---|---|---:|---:|---:|---:|---:|---:|---|",
                  f"| float32 | fp32 .tflite | {f['accuracy']:.4f} | {f['bytes']} | - | 1.0 | "
                  f"{_fmt(f.get('latency_ms'))} | {f.get('partitions')} | |",
                  f"| float32, +{m['same_budget_float']['extra_epochs']:g} epochs (the candidates' budget) | fp32 "
                  f".tflite | {m['same_budget_float']['accuracy']:.4f} | {m['same_budget_float']['bytes']} | - | 1.0 | "
                  "- | - | |"]
        for c in m["compress"]["candidates"]:
            if c["status"] != "ok":
                lines.append(f"| {c['name']} | {c['method']} | {c['status']}: {(c['error'] or '')[:120]} | | | | | | |")
                continue
            mark = "**recommended**" if c["name"] == m["compress"]["recommended"] else (
                "yes" if c["name"] in m["compress"]["frontier"] else ("reference" if c.get("reference") else ""))
            method = "tfmot QAT + converter (reference)" if c.get("reference") else f"tfq_ext {c['method']}"
            lines.append(f"| {c['name']} | {method} | {c['accuracy']:.4f} | {c['bytes']} | "
                         f"{c.get('gzip_bytes', '-')} | {f['bytes'] / c['bytes']:.1f} | {_fmt(c.get('latency_ms'))} | "
                         f"{c['partitions']} | {mark} |")
        for p in m["peers"]:
            if p["status"] != "ok":
                lines.append(f"| {p['name']} | {p.get('method', '')} | failed: {(p['error'] or '')[:160]} | | | | | | |")
                continue
            lines.append(f"| {p['name']} | {p['method']} | {p['accuracy']:.4f} | {p['bytes']} | {p['gzip_bytes']} | "
                         f"{f['bytes'] / p['bytes']:.1f} | {_fmt(p.get('latency_ms'))} | {p['partitions']} | peer |")
        noise = m.get("latency_noise") or {}
        tolerance = noise.get("max")
        tol_text = f"{tolerance:.1%}" if tolerance is not None else "5%"
        if noise.get("per_file"):
            lines += ["", "Latency noise of this run (the same file timed twice, relative gap of the medians): "
                      + ", ".join(f"{k} {v:.1%}" for k, v in noise["per_file"].items()) + "."]
        lines += ["", "Peer files and the tfq_ext files that are no larger, no less accurate and no slower (strictly; "
                  f"and no slower by more than the run's latency noise, {tol_text}):", ""]
        for d in m["dominance"]:
            tolerant = d.get("dominated_within_latency_noise", d.get("dominated_within_5pct_latency"))
            lines.append(f"- {d['peer']}: strictly {d['dominated_by'] or 'none'}; within the latency noise "
                         f"{tolerant or 'none'}; no larger than the peer's gzip size "
                         f"{d['no_larger_than_peer_gzip_and_as_accurate'] or 'none'}")
        s = m["smallest_within_1_point"]
        if s:
            lines.append(f"\nSmallest tfq_ext file within 1 point of float32: {s['name']}, {s['bytes']} bytes, "
                         f"{s['x_smaller_than_float32']:.1f}x smaller than float32, {s['partitions']} partition(s).")
        lines.append(f"\nRecommendation (max drop 1 point): {m['compress']['recommendation']}. Peak RSS "
                     f"{m['peak_rss_mb']:.0f} MiB.\n")
    return "\n".join(lines) + "\n"


def plot(result: dict, out_dir) -> list:
    """One PNG per model: file size (log axis) vs accuracy, tfq_ext's files and frontier next to every peer file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for m in result["models"].values():
        f = m["compress"]["float"]
        fig, ax = plt.subplots(figsize=(8, 5))
        ours = [c for c in m["compress"]["candidates"] if c["status"] == "ok" and not c.get("reference")]
        ax.scatter([c["bytes"] for c in ours], [c["accuracy"] for c in ours], marker="o", s=45, color="tab:blue",
                   label="tfq_ext files", zorder=3)
        front = sorted((c for c in ours if c["name"] in m["compress"]["frontier"]), key=lambda c: c["bytes"])
        ax.plot([c["bytes"] for c in front], [c["accuracy"] for c in front], "-", color="tab:blue", lw=1,
                label="tfq_ext frontier")
        peers = [dict(p, method="tfmot QAT") for p in m["compress"]["candidates"]
                 if p.get("reference") and p["status"] == "ok"] + [p for p in m["peers"] if p["status"] == "ok"]
        for method, marker in (("tfmot QAT", "s"), ("tfmot clustering + int8", "^"), ("ai-edge-quantizer", "D")):
            items = [p for p in peers if p["method"] == method]
            if items:
                ax.scatter([p["bytes"] for p in items], [p["accuracy"] for p in items], marker=marker, s=55,
                           facecolors="none", edgecolors="tab:red", label=method, zorder=4)
        for c in ours + peers:
            ax.annotate(c["name"], (c["bytes"], c["accuracy"]), textcoords="offset points", xytext=(4, 3), fontsize=6)
        ax.scatter([f["bytes"]], [f["accuracy"]], marker="X", s=80, color="black", label="float32 .tflite", zorder=5)
        ax.axhline(f["accuracy"] - 0.01, color="gray", lw=0.8, ls="--", label="float32 - 1 point")
        ax.axvline(f["bytes"] / 25, color="green", lw=0.8, ls=":", label="25x smaller than float32")
        ax.set_xscale("log")
        low = min(c["accuracy"] for c in ours + peers)
        ax.set_ylim(max(low, f["accuracy"] - 0.15) - 0.005, max(c["accuracy"] for c in ours + peers + [f]) + 0.005)
        ax.set_xlabel(".tflite file size (bytes, log scale)")
        ax.set_ylabel("accuracy from the file (5000 test images)")
        ax.set_title(f"{m['model']}: tfq_ext files vs the peers' (Fashion-MNIST)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = Path(out_dir) / f"frontier_{m['model']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(out_dir, quick: bool = False, command: str = "", models=MODELS) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*K clamped.*")
    path = out_dir / "frontier.json"
    previous = json.loads(path.read_text()) if path.exists() and set(models) != set(MODELS) else {}
    result = {"benchmark": "frontier", "quick": quick, "command": command or "python -m benchmarks.run --only frontier",
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.platform()}, {_cpu()}, TF {tf.__version__}",
              "models": {k: v for k, v in previous.get("models", {}).items() if k not in models}}
    for name in models:
        started = datetime.datetime.now().isoformat(timespec="seconds")
        model_t0 = time.perf_counter()
        result["models"][name] = run_model(name, quick, out_dir)
        result["models"][name].update(command=result["command"], date=started, machine=result["machine"],
                                      seconds=round(time.perf_counter() - model_t0, 1))
        result["seconds"] = time.perf_counter() - t0
        path.write_text(json.dumps(result, indent=2, default=str))
    result["seconds"] = time.perf_counter() - t0
    path.write_text(json.dumps(result, indent=2, default=str))
    (out_dir / "frontier.md").write_text(markdown(result))
    plot(result, out_dir)
    print(markdown(result), flush=True)
    return result


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    main(args.out, quick=args.quick, command=" ".join([sys.executable, "-m", "benchmarks.frontier", *sys.argv[1:]]),
         models=args.models)
