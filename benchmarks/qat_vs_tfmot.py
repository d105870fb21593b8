"""tfq_ext QAT vs tfmot QAT vs float/PTQ on Fashion-MNIST, in one process.

Measures accuracy (Keras and TFLite), QAT training step time (interleaved), peak RSS, TFLite size,
XNNPACK delegation, integer-only check, interleaved TFLite latency and layer coverage of both QAT tools.

Run with ``python -m benchmarks.run [--quick]`` (TF_USE_LEGACY_KERAS=1).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfq_ext._keras import keras, tf  # noqa: E402

SEED = 0
BATCH = 128


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_rss_mb() -> float:
    """Process-wide peak resident set size so far (ru_maxrss; KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        kib /= 1024
    return kib / 1024.0


def build_cnn() -> keras.Model:
    inp = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name="fmnist_cnn")


def compile_model(model: keras.Model, lr: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def keras_accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    logits = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def tflite_accuracy(fb: bytes, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    import tflite_export
    start = time.perf_counter()
    out = tflite_export.run(fb, x)
    return float(np.mean(np.argmax(out, axis=-1) == y)), time.perf_counter() - start


def float_tflite(model: keras.Model) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def first_line(exc: BaseException) -> str:
    text = [t.strip() for t in str(exc).strip().splitlines() if t.strip()]
    head = text[0] if text else ""
    if head.endswith(":") and len(text) > 1:  # a list follows; keep its first item
        head = f"{head} {text[1]}"
    return f"{type(exc).__name__}: {head}"[:300]


# ----------------------------------------------------------------------------------------------- step time
def interleaved_step_times(models: dict, xb: np.ndarray, yb: np.ndarray, rounds: int, warmup: int = 3,
                           steps_per_round: int = 4) -> dict:
    """Times ``train_on_batch`` on the same batch, models interleaved; the order rotates every round so that no
    model always runs right after another one, and each timing covers ``steps_per_round`` steps (per-step ms)."""
    names = list(models)
    for name in names:
        for _ in range(warmup):
            models[name].train_on_batch(xb, yb)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(steps_per_round):
                models[name].train_on_batch(xb, yb)
            times[name].append((time.perf_counter() - start) * 1e3 / steps_per_round)
    res = {"rounds": rounds, "warmup_steps": warmup, "steps_per_round": steps_per_round, "batch_size": int(len(xb)),
           "models": {}}
    for name in names:
        t = np.asarray(times[name])
        res["models"][name] = {"median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
                               "p90_ms": float(np.percentile(t, 90))}
    t_q, t_m, t_f = (np.asarray(times[n]) for n in ("tfq_ext", "tfmot", "float"))
    res["ratio_tfq_ext_over_tfmot"] = float(np.median(t_q / t_m))
    res["ratio_tfq_ext_over_float"] = float(np.median(t_q / t_f))
    res["ratio_tfmot_over_float"] = float(np.median(t_m / t_f))
    return res


# ----------------------------------------------------------------------------------------------- coverage
def _coverage_models() -> dict:
    L = keras.layers

    def fn(shape, body):
        def make():
            inp = keras.Input(shape)
            return keras.Model(inp, body(inp))
        return make

    def nested():
        inner_in = keras.Input((8, 8, 3))
        inner = keras.Model(inner_in, L.ReLU()(L.Conv2D(4, 3, padding="same")(inner_in)), name="inner")
        inp = keras.Input((8, 8, 3))
        return keras.Model(inp, L.Dense(2)(L.Flatten()(inner(inp))))

    return {
        "Conv2D+BN standalone (BN after pooling)":
            fn((8, 8, 3), lambda x: L.BatchNormalization()(L.MaxPooling2D()(L.Conv2D(4, 3, padding="same")(x)))),
        "Rescaling": fn((8, 8, 3), lambda x: L.Conv2D(4, 3)(L.Rescaling(1 / 255.0)(x))),
        "UpSampling2D": fn((8, 8, 3), lambda x: L.UpSampling2D()(L.Conv2D(4, 3, padding="same")(x))),
        "Conv1D": fn((16, 3), lambda x: L.ReLU()(L.Conv1D(4, 3)(x))),
        "Conv2DTranspose": fn((8, 8, 3), lambda x: L.ReLU()(L.Conv2DTranspose(4, 3, strides=2)(x))),
        "nested functional model": nested,
        "slicing Lambda layer: Lambda(lambda t: t[..., :2])":
            fn((8, 8, 3), lambda x: L.Conv2D(4, 3)(L.Lambda(lambda t: t[..., :2])(x))),
        "slicing on a KerasTensor x[..., :2] (SlicingOpLambda)": fn((8, 8, 3), lambda x: L.Conv2D(4, 3)(x[..., :2])),
        "SeparableConv2D": fn((8, 8, 3), lambda x: L.ReLU()(L.SeparableConv2D(4, 3)(x))),
        "DepthwiseConv2D": fn((8, 8, 3), lambda x: L.ReLU()(L.DepthwiseConv2D(3)(x))),
        "ZeroPadding2D": fn((8, 8, 3), lambda x: L.Conv2D(4, 3)(L.ZeroPadding2D()(x))),
        "Multiply": fn((8, 8, 3), lambda x: L.Multiply()([L.Conv2D(4, 3)(x), L.Conv2D(4, 3)(x)])),
        "Concatenate": fn((8, 8, 3), lambda x: L.Concatenate()([L.Conv2D(4, 3)(x), L.Conv2D(4, 3)(x)])),
    }


def layer_coverage() -> list[dict]:
    import tensorflow_model_optimization as tfmot
    from tfq_ext.qat import quantize_model

    rows = []
    for name, make in _coverage_models().items():
        row = {"layer": name}
        for tool, quantize in (("tfq_ext", quantize_model), ("tfmot", tfmot.quantization.keras.quantize_model)):
            try:
                qm = quantize(make())
                shape = (2,) + tuple(qm.input_shape[1:])
                qm(np.random.default_rng(0).random(shape, dtype=np.float32), training=True)
                row[tool] = {"ok": True, "error": None}
            except Exception as exc:  # noqa: BLE001 - recording the failure is the point
                row[tool] = {"ok": False, "error": first_line(exc)}
        log(f"coverage {name}: tfq_ext={'ok' if row['tfq_ext']['ok'] else 'FAIL'} "
            f"tfmot={'ok' if row['tfmot']['ok'] else 'FAIL'}")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------- report
def write_plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = results["export"]
    names = list(exp)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    acc = [exp[n]["tflite_accuracy"] if exp[n].get("tflite_accuracy") is not None else 0 for n in names]
    axes[0].bar(names, acc, color="tab:blue")
    lo = min([a for a in acc if a > 0] or [0])
    axes[0].set_ylim(max(0.0, lo - 0.05), 1.0)
    axes[0].set_title(f"TFLite test accuracy (n={results['tflite_eval_samples']})")
    for i, a in enumerate(acc):
        axes[0].text(i, a, f"{a:.4f}", ha="center", va="bottom", fontsize=8)
    lat = results["latency"]["models"]
    ln = list(lat)
    axes[1].bar(ln, [lat[n]["median_ms"] for n in ln], color="tab:orange",
                yerr=[[lat[n]["median_ms"] - lat[n]["p10_ms"] for n in ln],
                      [lat[n]["p90_ms"] - lat[n]["median_ms"] for n in ln]])
    axes[1].set_title("TFLite latency, 1 thread, XNNPACK (median, p10-p90)")
    axes[1].set_ylabel("ms / invoke (batch 1)")
    st = results["step_time"]["models"]
    sn = list(st)
    axes[2].bar(sn, [st[n]["median_ms"] for n in sn], color="tab:green",
                yerr=[[st[n]["median_ms"] - st[n]["p10_ms"] for n in sn],
                      [st[n]["p90_ms"] - st[n]["median_ms"] for n in sn]])
    axes[2].set_title(f"Keras train step, batch {results['step_time']['batch_size']} (median)")
    axes[2].set_ylabel("ms / step")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle("tfq_ext QAT vs tfmot QAT on Fashion-MNIST" + (" (quick)" if results["quick"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    r = results
    lines = [f"# tfq_ext QAT vs tfmot QAT on Fashion-MNIST{' (quick)' if r['quick'] else ''}", "",
             f"Command: `{r['machine']['command']}`  ",
             f"Machine: {r['machine']['platform']}, {r['machine']['cpu_count']} CPUs, TF {r['machine']['tf_version']}, "
             f"{r['machine']['date']}  ",
             f"Float: {r['config']['float_epochs']} epochs on {r['config']['float_train_samples']} samples; "
             f"QAT: {r['config']['qat_epochs']} epoch(s) on {r['config']['qat_train_samples']} samples "
             f"({r['config']['qat_steps']} steps, tfq_ext freeze_bn_delay={r['config']['freeze_bn_delay']}); "
             f"TFLite accuracy on {r['tflite_eval_samples']} test samples. Total runtime {r['runtime_s']:.0f} s.", "",
             "| model | Keras acc | TFLite acc | .tflite bytes | delegated/nodes | float tensors | latency ms | vs float32 |",
             "|---|---|---|---|---|---|---|---|"]
    keras_acc = r["keras_accuracy"]
    lat = r["latency"]
    for name, e in r["export"].items():
        ka = keras_acc.get(e["keras_model"])
        lm = lat["models"].get(name, {})
        ratio = lat.get("ratio_vs_float32", {}).get(name)
        fmt = lambda v, f: ("n/a" if v is None else format(v, f))  # noqa: E731
        lines.append(f"| {name} | {fmt(ka, '.4f')} | {fmt(e.get('tflite_accuracy'), '.4f')} | "
                     f"{fmt(e.get('size_bytes'), 'd')} | "
                     f"{e.get('delegated', 'n/a')}/{e.get('nodes', 'n/a')} | {fmt(e.get('float_tensors'), 'd')} | "
                     f"{fmt(lm.get('median_ms'), '.3f')} | {fmt(ratio, '.2f')} |")
        if e.get("error"):
            lines.append(f"|  error: {e['error']} | | | | | | | |")
    lines += ["", f"Latency ratio tfq_ext int8 / tfmot int8 (median of per-round ratios): "
                  f"{lat.get('ratio_tfq_ext_over_tfmot', float('nan')):.3f}", ""]
    st = r["step_time"]
    lines += [f"## QAT train step (train_on_batch, batch {st['batch_size']}, {st['rounds']} interleaved rounds)", "",
              "| model | median ms | p10 ms | p90 ms |", "|---|---|---|---|"]
    for name, m in st["models"].items():
        lines.append(f"| {name} | {m['median_ms']:.1f} | {m['p10_ms']:.1f} | {m['p90_ms']:.1f} |")
    lines += ["", f"Ratios (median of per-round ratios): tfq_ext/tfmot {st['ratio_tfq_ext_over_tfmot']:.3f}, "
                  f"tfq_ext/float {st['ratio_tfq_ext_over_float']:.3f}, tfmot/float {st['ratio_tfmot_over_float']:.3f}",
              "", "## Peak RSS (process-wide ru_maxrss, cumulative: each value is the peak so far, not per phase)", "",
              "| after phase | peak RSS MiB |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in r["peak_rss_mb_after"].items()]
    lines += ["", "## Layer coverage (quantize_model accepts a tiny model with the layer)", "",
              "| layer | tfq_ext | tfmot |", "|---|---|---|"]
    for row in r["layer_coverage"]:
        cell = lambda c: "yes" if c["ok"] else f"no: {c['error'][:120].replace('|', '/')}"  # noqa: E731
        lines.append(f"| {row['layer']} | {cell(row['tfq_ext'])} | {cell(row['tfmot'])} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- main
def main(out_dir, quick: bool = False, command: str | None = None) -> dict:
    import tensorflow_model_optimization as tfmot

    import tflite_export
    from tfq_ext.data import load_fashion_mnist
    from tfq_ext.qat import quantize_model

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rss: dict[str, float] = {}
    keras.utils.set_random_seed(SEED)

    data = load_fashion_mnist()
    float_n = 10_000 if quick else len(data.x_train)
    float_epochs = 1 if quick else 4
    qat_n = 3_000 if quick else len(data.x_train)
    qat_epochs = 1
    eval_n = 2_000 if quick else len(data.x_test)
    step_rounds = 10 if quick else 40
    lat_rounds, lat_runs = (10, 10) if quick else (30, 20)
    x_tr, y_tr = data.x_train[:float_n], data.y_train[:float_n]
    x_q, y_q = data.x_train[:qat_n], data.y_train[:qat_n]
    x_te, y_te = data.x_test[:eval_n], data.y_test[:eval_n]
    qat_steps = qat_epochs * math.ceil(qat_n / BATCH)
    freeze_bn_delay = qat_steps // 2
    rss["load_data"] = peak_rss_mb()
    log(f"data: train {data.x_train.shape}, test {data.x_test.shape}; quick={quick}")

    # 1. float training
    float_model = build_cnn()
    compile_model(float_model, 1e-3)
    start = time.perf_counter()
    float_model.fit(x_tr, y_tr, batch_size=BATCH, epochs=float_epochs, shuffle=True, verbose=2)
    float_train_s = time.perf_counter() - start
    rss["float_train"] = peak_rss_mb()
    log(f"float trained in {float_train_s:.1f} s")

    # 2. QAT fine-tuning from the float weights
    def train_qat(model, label: str) -> float:
        """Same optimizer, seed, data and epochs for both QAT tools; returns seconds and records peak RSS."""
        compile_model(model, 1e-4)
        keras.utils.set_random_seed(SEED + 1)
        start = time.perf_counter()
        model.fit(x_q, y_q, batch_size=BATCH, epochs=qat_epochs, shuffle=True, verbose=2)
        seconds = time.perf_counter() - start
        rss[f"{label}_qat_train"] = peak_rss_mb()
        log(f"{label} QAT trained in {seconds:.1f} s")
        return seconds

    qat_tfq = quantize_model(float_model, freeze_bn_delay=freeze_bn_delay)
    tfq_train_s = train_qat(qat_tfq, "tfq_ext")

    clone = keras.models.clone_model(float_model)
    clone.set_weights(float_model.get_weights())
    qat_tfmot = tfmot.quantization.keras.quantize_model(clone)
    tfmot_train_s = train_qat(qat_tfmot, "tfmot")

    # The float reference gets the same extra training (epochs, learning rate, data) as the QAT models, so that
    # "int8 vs float" compares equal training budgets; PTQ then starts from this model too.
    compile_model(float_model, 1e-4)
    keras.utils.set_random_seed(SEED + 2)
    float_model.fit(x_q, y_q, batch_size=BATCH, epochs=qat_epochs, shuffle=True, verbose=2)
    log("float reference fine-tuned for the same QAT budget")

    keras_acc = {name: keras_accuracy(m, x_te, y_te)
                 for name, m in (("float", float_model), ("tfq_ext_qat", qat_tfq), ("tfmot_qat", qat_tfmot))}
    log(f"Keras accuracy on {eval_n}: {keras_acc}")

    # 4. export
    exporters = {
        "float32": ("float", lambda: float_tflite(float_model)),
        "ptq_int8": ("float", lambda: tflite_export.convert(float_model, representative_data=data.x_train[:200])),
        "tfq_ext_int8": ("tfq_ext_qat", lambda: tflite_export.convert(qat_tfq)),
        "tfmot_int8": ("tfmot_qat", lambda: tflite_export.convert(qat_tfmot)),
    }
    flatbuffers: dict[str, bytes] = {}
    export: dict[str, dict] = {}
    for name, (keras_name, make) in exporters.items():
        entry: dict = {"keras_model": keras_name}
        try:
            start = time.perf_counter()
            fb = make()
            entry["convert_s"] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001
            entry["error"] = first_line(exc)
            export[name] = entry
            log(f"export {name} FAILED: {entry['error']}")
            continue
        flatbuffers[name] = fb
        entry["size_bytes"] = len(fb)
        dr = tflite_export.delegation_report(fb)
        entry["nodes"], entry["delegated"] = int(dr["nodes"]), int(dr["delegated"])
        entry["not_delegated"] = dr["not_delegated"]
        try:
            rep = tflite_export.verify(fb)
            entry["float_tensors"] = len(rep.float_tensors)
            entry["integer_only"] = bool(getattr(rep, "integer_only", len(rep.float_tensors) == 0))
        except Exception as exc:  # noqa: BLE001
            entry["verify_error"] = first_line(exc)
        entry["tflite_accuracy"], entry["tflite_eval_s"] = tflite_accuracy(fb, x_te, y_te)
        export[name] = entry
        log(f"export {name}: {len(fb)} bytes, acc {entry['tflite_accuracy']:.4f}, "
            f"delegated {entry['delegated']}/{entry['nodes']}, float tensors {entry.get('float_tensors')}, "
            f"eval {entry['tflite_eval_s']:.1f} s")
    rss["export_and_tflite_eval"] = peak_rss_mb()

    # 5. latency, interleaved, tfq_ext first so that ratios are vs tfq_ext; the others are derived below
    order = [n for n in ("tfq_ext_int8", "tfmot_int8", "float32", "ptq_int8") if n in flatbuffers]
    log(f"latency: {order}, {lat_rounds} rounds x {lat_runs} runs, 1 thread")
    latency = tflite_export.compare_latency({n: flatbuffers[n] for n in order}, rounds=lat_rounds,
                                            runs_per_round=lat_runs, num_threads=1)
    if "tfmot_int8" in latency["ratio"]:
        latency["ratio_tfq_ext_over_tfmot"] = 1.0 / latency["ratio"]["tfmot_int8"]
    if "float32" in latency["ratio"]:
        f = latency["ratio"]["float32"]
        # ratio[n] is median(n / tfq_ext); n / float32 approximated as ratio[n] / ratio[float32]
        latency["ratio_vs_float32"] = {n: latency["ratio"][n] / f for n in latency["ratio"]}
    rss["latency"] = peak_rss_mb()
    log("latency medians ms: " + ", ".join(f"{n}={m['median_ms']:.3f}" for n, m in latency["models"].items()))

    # 3. step time (after export so that the extra steps do not change the exported models)
    log(f"step time: {step_rounds} interleaved rounds of train_on_batch")
    xb, yb = data.x_train[:BATCH], data.y_train[:BATCH]
    step = interleaved_step_times({"tfq_ext": qat_tfq, "tfmot": qat_tfmot, "float": float_model}, xb, yb,
                                  rounds=step_rounds)
    rss["step_time"] = peak_rss_mb()
    log("step medians ms: " + ", ".join(f"{n}={m['median_ms']:.1f}" for n, m in step["models"].items())
        + f"; tfq_ext/tfmot={step['ratio_tfq_ext_over_tfmot']:.3f}")

    # 6. layer coverage
    coverage = layer_coverage()
    rss["layer_coverage"] = peak_rss_mb()

    results = {
        "quick": quick,
        "machine": {
            "platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "tf_version": tf.__version__,
            "tf_keras_version": getattr(keras, "__version__", None), "tfmot_version": tfmot.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": command or " ".join([sys.executable, *sys.argv]),
        },
        "config": {"seed": SEED, "batch_size": BATCH, "float_epochs": float_epochs, "float_train_samples": float_n,
                   "float_lr": 1e-3, "qat_epochs": qat_epochs, "qat_train_samples": qat_n, "qat_lr": 1e-4,
                   "qat_steps": qat_steps, "freeze_bn_delay": freeze_bn_delay, "optimizer": "Adam"},
        "train_time_s": {"float": float_train_s, "tfq_ext_qat": tfq_train_s, "tfmot_qat": tfmot_train_s},
        "keras_accuracy": keras_acc,
        "tflite_eval_samples": eval_n,
        "export": export,
        "latency": latency,
        "step_time": step,
        "peak_rss_mb_after": rss,
        "peak_rss_note": "ru_maxrss is the process-wide peak so far; values are cumulative, not per phase",
        "layer_coverage": coverage,
    }
    results["runtime_s"] = time.perf_counter() - t0
    (out_dir / "qat_vs_tfmot.json").write_text(json.dumps(results, indent=2, default=str))
    md = markdown(results)
    (out_dir / "qat_vs_tfmot.md").write_text(md)
    write_plot(results, out_dir / "qat_vs_tfmot.png")
    print(md, flush=True)
    log(f"wrote {out_dir}/qat_vs_tfmot.{{json,md,png}} in {results['runtime_s']:.0f} s")
    return results
