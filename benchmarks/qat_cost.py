"""QAT training cost: tfq_ext ``quantize_model`` vs tfmot ``quantize_model`` vs float, what a ``fit`` user feels.

For each model (the Fashion-MNIST conv-BN CNN of ``benchmarks.qat_vs_tfmot`` and MobileNetV2 at 96x96) and each
tool, one fresh Python process quantizes a freshly built model (same seed, same initial weights), compiles it
(Adam, sparse cross-entropy) and runs ``fit`` for two epochs on the same data:

- epoch 1: from the freshly quantized model, tracing and the first step included (what a user waits for);
- epoch 2: the steady state (graph already built);
- peak RSS: the high-water mark of that process's resident memory at the end (``VmHWM`` on Linux: data,
  model, traced graph, two epochs).

Runs are interleaved per pair (the tool that runs first alternates between pairs; float runs last as the
reference), so that the load of a shared machine hits both tools alike; the summary gives medians and the
median of the per-pair ratios tfq_ext/tfmot.

Run with ``python -m benchmarks.qat_cost [--quick] [--out DIR]`` (TF_USE_LEGACY_KERAS=1); a worker is
``python -m benchmarks.qat_cost --worker --model cnn --tool tfmot --data FILE.npz --batch 128``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

SEED = 0
TOOLS = ("tfq_ext", "tfmot", "float")
# model -> (training images, batch size), full and quick
SIZES = {"fmnist_cnn": ((20_000, 128), (2_000, 128)), "mobilenet_v2_96": ((2_000, 32), (128, 32))}
# quick: MobileNetV2's tracing alone takes most of a minute per process, so its float reference is left out
QUICK_TOOLS = {"fmnist_cnn": TOOLS, "mobilenet_v2_96": ("tfq_ext", "tfmot")}
MARKER = "QAT_COST_RESULT "


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own address space. Not
    ``ru_maxrss``: Linux carries it across fork + exec, so a worker would report at least the RSS of the driver
    that started it. Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


# ----------------------------------------------------------------------------------------------- worker
def build_model(name: str):
    from tfq_ext._keras import keras

    if name == "fmnist_cnn":
        from benchmarks.qat_vs_tfmot import build_cnn
        return build_cnn()
    if name == "mobilenet_v2_96":
        return keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None, classes=10)
    raise ValueError(f"unknown model {name!r}; expected one of {sorted(SIZES)}")


class _StepClock:
    """Wall time of the first training batch of each epoch (tracing and graph optimisation land there)."""

    def __init__(self, keras):
        outer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer.epoch_start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                if batch == 0:
                    outer.first.append(time.perf_counter() - outer.epoch_start)

        self.first: list[float] = []
        self.epoch_start = 0.0
        self.callback = Callback()


def worker(model_name: str, tool: str, data_path: str, batch: int, epochs: int = 2) -> dict:
    """One tool on one model in this (fresh) process; returns the measurements."""
    from tfq_ext._keras import keras, tf

    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    with np.load(data_path) as data:
        x, y = data["x"], data["y"]
    keras.utils.set_random_seed(SEED)
    model = build_model(model_name)
    start = time.perf_counter()
    if tool == "tfq_ext":
        from tfq_ext.qat import quantize_model
        model = quantize_model(model)
    elif tool == "tfmot":
        import tensorflow_model_optimization as tfmot
        model = tfmot.quantization.keras.quantize_model(model)
    elif tool != "float":
        raise ValueError(f"unknown tool {tool!r}; expected one of {TOOLS}")
    quantize_s = time.perf_counter() - start
    from_logits = model_name == "fmnist_cnn"  # MobileNetV2 ends in a softmax
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits), metrics=["accuracy"])
    clock = _StepClock(keras)
    epoch_s, epoch_cpu_s, loss = [], [], []
    for epoch in range(epochs):
        start, cpu = time.perf_counter(), time.process_time()
        history = model.fit(x, y, batch_size=batch, epochs=epoch + 1, initial_epoch=epoch, shuffle=True,
                            verbose=0, callbacks=[clock.callback])
        epoch_s.append(time.perf_counter() - start)
        epoch_cpu_s.append(time.process_time() - cpu)
        loss.append(float(history.history["loss"][-1]))
    steps = -(-len(x) // batch)
    return {"model": model_name, "tool": tool, "train_images": int(len(x)), "batch_size": batch, "steps": steps,
            "quantize_s": quantize_s, "epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu_s, "first_step_s": clock.first,
            "loss": loss, "params": int(model.count_params()), "peak_rss_mb": peak_rss_mb(),
            "load_average_1min": [load_before[0] if load_before else None,
                                  os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
            "tf_version": tf.__version__}


def interleaved_steps(model_name: str, data_path: str, batch: int, rounds: int = 15, steps: int = 3) -> dict:
    """Steady-state train steps of tfq_ext and tfmot QAT models held in one process, interleaved.

    Both models are quantized from the same float model, compiled alike and traced first; then each round runs
    ``steps`` ``train_on_batch`` calls on one model, then on the other (the order alternates per round), timing
    wall and process CPU seconds. Whatever load the machine has hits both alike, so the per-round ratios are a
    steadier reading of the per-step cost than separate processes on a shared machine.
    """
    from tfq_ext._keras import keras
    import tensorflow_model_optimization as tfmot
    from tfq_ext.qat import quantize_model

    with np.load(data_path) as data:
        x, y = data["x"][:batch], data["y"][:batch]
    keras.utils.set_random_seed(SEED)
    base = build_model(model_name)
    models = {"tfq_ext": quantize_model(base), "tfmot": tfmot.quantization.keras.quantize_model(base)}
    from_logits = model_name == "fmnist_cnn"
    for model in models.values():
        model.compile(optimizer=keras.optimizers.Adam(1e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
        model.train_on_batch(x, y)
        model.train_on_batch(x, y)
    times = {t: {"wall_ms": [], "cpu_ms": []} for t in models}
    for k in range(rounds):
        for tool in (("tfq_ext", "tfmot") if k % 2 == 0 else ("tfmot", "tfq_ext")):
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                models[tool].train_on_batch(x, y)
            times[tool]["wall_ms"].append(1e3 * (time.perf_counter() - wall) / steps)
            times[tool]["cpu_ms"].append(1e3 * (time.process_time() - cpu) / steps)
    out = {"rounds": rounds, "steps_per_round": steps, "batch_size": batch}
    for metric in ("wall_ms", "cpu_ms"):
        ratios = [a / b for a, b in zip(times["tfq_ext"][metric], times["tfmot"][metric])]
        out[metric] = {t: float(np.median(v[metric])) for t, v in times.items()}
        out[metric]["ratio_median"] = float(np.median(ratios))
    return out


# ----------------------------------------------------------------------------------------------- driver
def prepare_data(model_name: str, n: int, directory: Path) -> Path:
    """The training images of ``model_name`` as one .npz (MobileNetV2: resized to 96x96 and tiled to RGB once)."""
    from tfq_ext._keras import tf
    from tfq_ext.data import load_fashion_mnist

    data = load_fashion_mnist(limit_train=n)
    x, y = data.x_train[:n], data.y_train[:n].astype("int32")
    if model_name == "mobilenet_v2_96":
        x = np.repeat(tf.image.resize(x, (96, 96)).numpy(), 3, axis=-1).astype("float32")
    path = directory / f"{model_name}_{n}.npz"
    np.savez(path, x=x, y=y)
    return path


def run_worker(model_name: str, tool: str, data_path: Path, batch: int, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.qat_cost", "--worker", "--model", model_name, "--tool", tool,
           "--data", str(data_path), "--batch", str(batch)]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout_s,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2"))
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
    raise RuntimeError(f"worker {model_name}/{tool} failed (rc {proc.returncode}): " + " | ".join(tail))


def _stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def summarize(runs: list[dict]) -> dict:
    """Medians per tool and per-pair ratios (pair k: the k-th run of each tool)."""
    pairs = sorted({r["pair"] for r in runs})
    # a pair counts for a ratio only when both of its runs succeeded
    by_pair = {(r["tool"], r["pair"]): r for r in runs}
    by_tool = {t: [r for r in runs if r["tool"] == t] for t in TOOLS}
    metrics = {"epoch1_s": lambda r: r["epoch_s"][0], "epoch2_s": lambda r: r["epoch_s"][1],
               "first_step_s": lambda r: r["first_step_s"][0], "epoch1_cpu_s": lambda r: r["epoch_cpu_s"][0],
               "epoch2_cpu_s": lambda r: r["epoch_cpu_s"][1], "peak_rss_mb": lambda r: r["peak_rss_mb"],
               "quantize_s": lambda r: r["quantize_s"],
               "steady_step_ms": lambda r: 1e3 * (r["epoch_s"][1] / r["steps"])}
    out: dict = {"tools": {}, "ratios": {}}
    for tool, rs in by_tool.items():
        if rs:
            out["tools"][tool] = {name: _stats([f(r) for r in rs]) for name, f in metrics.items()}
    for num, den in (("tfq_ext", "tfmot"), ("tfq_ext", "float"), ("tfmot", "float")):
        matched = [(by_pair[(num, k)], by_pair[(den, k)]) for k in pairs
                   if (num, k) in by_pair and (den, k) in by_pair]
        if not matched:
            continue
        out["ratios"][f"{num}/{den}"] = {
            name: {"per_pair": [f(a) / f(b) for a, b in matched],
                   "median": float(np.median([f(a) / f(b) for a, b in matched]))}
            for name, f in metrics.items() if name != "quantize_s"}
    return out


def markdown(report: dict) -> str:
    lines = [f"# QAT training cost: tfq_ext vs tfmot vs float{' (quick)' if report['quick'] else ''}", "",
             f"Command: `{report['command']}`  ",
             f"Machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPUs; "
             f"TF {report['machine']['tf_version']}, tf_keras {report['machine']['tf_keras_version']}, "
             f"tfmot {report['machine']['tfmot_version']}; {report['machine']['date']}; "
             f"total {report['seconds']:.0f} s.  ",
             "Each run is a fresh process: build (seed 0), quantize, compile (Adam 1e-4), `fit` 2 epochs. "
             "Epoch 1 includes tracing and the first step; epoch 2 is the steady state. "
             "Interleaved pairs per model as given; values are medians (min-max), ratios are "
             "medians of the per-pair ratios.", ""]
    for model, entry in report["models"].items():
        s = entry["summary"]
        lines += [f"## {model}: {entry['train_images']} images, batch {entry['batch_size']} "
                  f"({entry['steps']} steps/epoch), {entry.get('pairs', report['pairs'])} pairs"
                  f"{', run ' + entry['date'] if 'date' in entry else ''}", "",
                  "| tool | epoch 1 s (incl. tracing) | first step s | epoch 2 s (steady) | steady ms/step | "
                  "epoch 1 / 2 CPU s | peak RSS MiB | quantize_model s |", "|---|---|---|---|---|---|---|---|"]
        for tool, m in s["tools"].items():
            cell = lambda k, f=".1f": (f"{m[k]['median']:{f}} ({m[k]['min']:{f}}-{m[k]['max']:{f}})")  # noqa: E731
            lines.append(f"| {tool} | {cell('epoch1_s')} | {cell('first_step_s')} | {cell('epoch2_s')} | "
                         f"{cell('steady_step_ms', '.0f')} | {m['epoch1_cpu_s']['median']:.1f} / "
                         f"{m['epoch2_cpu_s']['median']:.1f} | {cell('peak_rss_mb', '.0f')} | "
                         f"{cell('quantize_s', '.2f')} |")
        lines += ["", "| ratio (median of per-pair) | epoch 1 | epoch 2 | first step | epoch 1 CPU | epoch 2 CPU | "
                      "peak RSS | per-pair epoch 1 | per-pair epoch 2 CPU |", "|---|---|---|---|---|---|---|---|---|"]
        for name, r in s["ratios"].items():
            per_pair = ", ".join(f"{v:.3f}" for v in r["epoch1_s"]["per_pair"])
            per_pair_cpu = ", ".join(f"{v:.3f}" for v in r["epoch2_cpu_s"]["per_pair"])
            lines.append(f"| {name} | {r['epoch1_s']['median']:.3f} | {r['epoch2_s']['median']:.3f} | "
                         f"{r['first_step_s']['median']:.3f} | {r['epoch1_cpu_s']['median']:.3f} | "
                         f"{r['epoch2_cpu_s']['median']:.3f} | {r['peak_rss_mb']['median']:.3f} | {per_pair} | "
                         f"{per_pair_cpu} |")
        inter = entry.get("interleaved_steady")
        if inter:
            lines += ["", f"Steady-state steps in one process, interleaved ({inter['rounds']} rounds of "
                          f"{inter['steps_per_round']} `train_on_batch`, batch {inter['batch_size']}): tfq_ext "
                          f"{inter['wall_ms']['tfq_ext']:.0f} ms ({inter['cpu_ms']['tfq_ext']:.0f} ms CPU), tfmot "
                          f"{inter['wall_ms']['tfmot']:.0f} ms ({inter['cpu_ms']['tfmot']:.0f} ms CPU); median "
                          f"per-round ratio tfq_ext/tfmot {inter['wall_ms']['ratio_median']:.3f} wall, "
                          f"{inter['cpu_ms']['ratio_median']:.3f} CPU."]
        lines.append("")
    for failure in report.get("failures", []):
        lines.append(f"FAILED: {failure['model']} pair {failure['pair']} {failure['tool']}: {failure['error']}  ")
    return "\n".join(lines) + "\n"


def write_plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        tools = report["models"][model]["summary"]["tools"]
        names = list(tools)
        first = [tools[t]["epoch1_s"]["median"] - tools[t]["epoch2_s"]["median"] for t in names]
        steady = [tools[t]["epoch2_s"]["median"] for t in names]
        ax.bar(names, steady, label="steady epoch (epoch 2)", color="tab:blue")
        ax.bar(names, first, bottom=steady, label="extra in epoch 1 (tracing, first step)", color="tab:orange")
        for i, t in enumerate(names):
            ax.text(i, steady[i] + first[i], f"{tools[t]['epoch1_s']['median']:.1f} s", ha="center", va="bottom")
        ax.set_title(model)
        ax.set_ylabel("seconds per epoch (median)")
        ax.legend(fontsize=8)
    fig.suptitle("fit: first epoch from a freshly quantized model" + (" (quick)" if report["quick"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(out_dir, quick: bool = False, command: str = "", models=None, pairs: int | None = None) -> dict:
    """Runs ``models`` (default: all); an earlier report's entries for the other models are kept."""
    import tensorflow_model_optimization as tfmot

    from tfq_ext._keras import keras, tf

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = pairs or (1 if quick else 3)
    models = list(models or SIZES)
    unknown = [m for m in models if m not in SIZES]
    if unknown:
        raise ValueError(f"`models` has unknown models {unknown}; expected names from {sorted(SIZES)}")
    previous_path = out_dir / "qat_cost.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() and len(models) < len(SIZES) else {}
    report: dict = {
        "benchmark": "qat_cost", "quick": quick, "pairs": pairs,
        "command": command or " ".join([sys.executable, "-m", "benchmarks.qat_cost", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "tf_version": tf.__version__,
                    "tf_keras_version": getattr(keras, "__version__", None), "tfmot_version": tfmot.__version__,
                    "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "config": {"seed": SEED, "optimizer": "Adam(1e-4)", "epochs_per_run": 2,
                   "quantize_model_args": "defaults (tfq_ext: freeze_bn_delay=None; tfmot: default scheme)",
                   "order": "per pair: tfq_ext and tfmot alternate which runs first, then float"},
        "models": {m: entry for m, entry in previous.get("models", {}).items() if m not in models},
    }
    failures: list[dict] = []
    report["failures"] = failures
    with tempfile.TemporaryDirectory(prefix="qat_cost_") as tmp:
        for model_name in models:
            sizes = SIZES[model_name]
            n, batch = sizes[1] if quick else sizes[0]
            data_path = prepare_data(model_name, n, Path(tmp))
            runs: list[dict] = []
            for k in range(pairs):
                order = ("tfq_ext", "tfmot") if k % 2 == 0 else ("tfmot", "tfq_ext")
                tools = QUICK_TOOLS[model_name] if quick else TOOLS
                for tool in order + (("float",) if "float" in tools else ()):
                    try:
                        result = run_worker(model_name, tool, data_path, batch, timeout_s=3600)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # keep the other runs
                        failures.append({"model": model_name, "tool": tool, "pair": k, "error": str(exc)[-500:]})
                        log(f"{model_name} pair {k} {tool}: FAILED {failures[-1]['error']}")
                        continue
                    result["pair"] = k
                    runs.append(result)
                    log(f"{model_name} pair {k} {tool}: epoch1 {result['epoch_s'][0]:.1f} s "
                        f"(first step {result['first_step_s'][0]:.1f} s), epoch2 {result['epoch_s'][1]:.1f} s, "
                        f"peak RSS {result['peak_rss_mb']:.0f} MiB")
            if not runs:
                continue
            try:
                interleaved = run_worker(model_name, "interleaved", data_path, batch, timeout_s=3600)
                log(f"{model_name} interleaved steady steps: tfq_ext/tfmot wall "
                    f"{interleaved['wall_ms']['ratio_median']:.3f}, CPU {interleaved['cpu_ms']['ratio_median']:.3f}")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                interleaved = None
                failures.append({"model": model_name, "tool": "interleaved", "pair": -1, "error": str(exc)[-500:]})
            report["models"][model_name] = {"interleaved_steady": interleaved,"train_images": n, "batch_size": batch, "steps": runs[0]["steps"],
                                            "pairs": pairs, "date": report["machine"]["date"],
                                            "command": report["command"], "runs": runs,
                                            "summary": summarize(runs)}
            r = report["models"][model_name]["summary"]["ratios"].get("tfq_ext/tfmot")
            if r is None:
                continue
            log(f"{model_name}: tfq_ext/tfmot epoch1 {r['epoch1_s']['median']:.3f}, "
                f"epoch2 {r['epoch2_s']['median']:.3f}, peak RSS {r['peak_rss_mb']['median']:.3f}")
    report["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["seconds"] = time.perf_counter() - t0
    (out_dir / "qat_cost.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (out_dir / "qat_cost.md").write_text(md)
    try:
        write_plot(report, out_dir / "qat_cost.png")
    except ImportError:  # matplotlib is optional
        pass
    print(md, flush=True)
    return report


def _cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny data, one pair (a couple of minutes)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--models", nargs="+", choices=sorted(SIZES), help="only these (other results kept)")
    parser.add_argument("--pairs", type=int, help="interleaved pairs per model (default 3, quick 1)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=sorted(SIZES))
    parser.add_argument("--tool", choices=TOOLS + ("interleaved",))
    parser.add_argument("--data")
    parser.add_argument("--batch", type=int)
    args = parser.parse_args(argv)
    if args.worker and args.tool == "interleaved":
        print(MARKER + json.dumps(interleaved_steps(args.model, args.data, args.batch)), flush=True)
        return 0
    if args.worker:
        print(MARKER + json.dumps(worker(args.model, args.tool, args.data, args.batch)), flush=True)
        return 0
    main(args.out, quick=args.quick,
         command=" ".join([sys.executable, "-m", "benchmarks.qat_cost", *(argv or sys.argv[1:])]),
         models=args.models, pairs=args.pairs)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
