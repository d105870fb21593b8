"""keras.applications end to end: tfq_ext QAT vs tfmot QAT vs post-training int8, from tf_keras and Keras 3.

Two parts (``python -m benchmarks.run --only applications``):

- coverage: every constructor of the issue's list at 96x96 (weights=None, 10 classes), built by tf_keras and,
  where Keras 3 has it, by Keras 3; tools: tfq_ext QAT, tfmot QAT, post-training int8 through
  ``tflite_export.convert`` (``ptq``) and through the converter without tfq_ext's XNNPACK rewrites
  (``ptq_plain``); per tool: accepted, integer-only, XNNPACK partitions, nodes outside XNNPACK,
  QAT step time (``train_on_batch``, batch 8, median of 5 after the traced first step), the process's peak RSS
  after QAT, conversion seconds and, for tfq_ext, the share of layers whose TFLite tensor is within one step of
  the Keras layer fed TFLite's inputs (``tflite_export.parity``). Each (constructor, build, tool) runs in a fresh
  process, so RSS is that tool's.
- accuracy: MobileNetV3Small and EfficientNetB0 trained from scratch on Fashion-MNIST (resized to 32x32 RGB) in
  float, then QAT, then int8 TFLite, next to post-training int8, with int8 vs fp32 latency on XNNPACK
  (1 thread, interleaved medians).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

SIZE = 96
# name -> (constructor name, extra kwargs); "NoPre" variants pass include_preprocessing=False.
CONSTRUCTORS = {
    "MobileNet": ("MobileNet", {}), "MobileNetV2": ("MobileNetV2", {}),
    "MobileNetV3Small": ("MobileNetV3Small", {}),
    "MobileNetV3Small (no preprocessing)": ("MobileNetV3Small", {"include_preprocessing": False}),
    "MobileNetV3Large": ("MobileNetV3Large", {}),
    "MobileNetV3Large (no preprocessing)": ("MobileNetV3Large", {"include_preprocessing": False}),
    "EfficientNetB0": ("EfficientNetB0", {}), "EfficientNetB1": ("EfficientNetB1", {}),
    "EfficientNetB2": ("EfficientNetB2", {}), "EfficientNetB3": ("EfficientNetB3", {}),
    "EfficientNetV2B0": ("EfficientNetV2B0", {}), "EfficientNetV2B1": ("EfficientNetV2B1", {}),
    "EfficientNetV2B2": ("EfficientNetV2B2", {}), "ResNet50": ("ResNet50", {}), "ResNet50V2": ("ResNet50V2", {}),
    "DenseNet121": ("DenseNet121", {}), "NASNetMobile": ("NASNetMobile", {}), "Xception": ("Xception", {}),
    "InceptionV3": ("InceptionV3", {}), "RegNetX002": ("RegNetX002", {}), "RegNetY002": ("RegNetY002", {}),
    "ConvNeXtTiny": ("ConvNeXtTiny", {}),
}
QUICK = ["MobileNetV3Small", "EfficientNetB0"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _peak_rss_mb() -> float:
    from benchmarks.qat_cost import peak_rss_mb

    return peak_rss_mb()


def _first_line(exc: BaseException) -> str:
    lines = [t.strip() for t in str(exc).strip().splitlines() if t.strip()]
    head = lines[0] if lines else ""
    if head.endswith(":") and len(lines) > 1:
        head = f"{head} {lines[1]}"
    return f"{type(exc).__name__}: {head}"[:300]


def _build(name: str, build: str, size: int):
    constructor, kwargs = CONSTRUCTORS[name]
    if build == "keras3":
        import keras as keras3

        module = keras3.applications
    else:
        from tfq_ext._keras import keras

        module = keras.applications
    fn = getattr(module, constructor, None)
    if fn is None:
        return None
    return fn(input_shape=(size, size, 3), weights=None, classes=10, **kwargs)


def _file_report(flatbuffer: bytes) -> dict:
    import tflite_export

    report = tflite_export.verify(flatbuffer)
    return {"integer_only": report.integer_only, "nodes": report.num_nodes, "partitions": report.delegate_partitions,
            "outside": report.not_delegated, "bytes": report.size_bytes}


def _step_times(model, x, y) -> dict:
    from tfq_ext._keras import keras

    model.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy())
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return {"first_step_s": first, "step_ms": float(np.median(times) * 1e3)}


def worker(name: str, build: str, tool: str, size: int) -> dict:
    """One (constructor, build, tool) measurement in this process (see the module docstring)."""
    import tflite_export
    from tfq_ext._keras import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, size, size, 3)).astype("float32")
    y = np.arange(8) % 10
    row = {"name": name, "build": build, "tool": tool}
    model = _build(name, build, size)
    if model is None:
        return dict(row, accepted=None, error=f"{build} has no {CONSTRUCTORS[name][0]}")
    if tool in ("ptq", "ptq_plain"):
        start = time.perf_counter()
        try:  # ptq_plain: the converter alone, without tfq_ext's XNNPACK rewrites of the float graph
            flatbuffer = tflite_export.convert(model, x, verify=False, xnnpack_rewrites=tool == "ptq")
        except Exception as exc:  # noqa: BLE001 - recorded in the table
            return dict(row, accepted=False, error=_first_line(exc))
        return dict(row, accepted=True, convert_s=time.perf_counter() - start, **_file_report(flatbuffer))
    start = time.perf_counter()
    try:
        if tool == "tfq_ext":
            from tfq_ext.qat import quantize_model

            qat = quantize_model(model)
        else:
            import tensorflow_model_optimization as tfmot

            qat = tfmot.quantization.keras.quantize_model(model)
    except Exception as exc:  # noqa: BLE001 - recorded in the table
        return dict(row, accepted=False, error=_first_line(exc))
    row.update(accepted=True, quantize_s=time.perf_counter() - start)
    row.update(_step_times(qat, x, y))
    row["peak_rss_mb"] = _peak_rss_mb()
    start = time.perf_counter()
    try:
        flatbuffer = tflite_export.convert(qat, verify=False)
    except Exception as exc:  # noqa: BLE001
        return dict(row, error=_first_line(exc))
    row["convert_s"] = time.perf_counter() - start
    row.update(_file_report(flatbuffer))
    if tool == "tfq_ext":
        from tflite_export.parity import layer_parity

        rows = [r for r in layer_parity(qat, flatbuffer, x[:2], max_samples=2) if r.local_within_1 is not None]
        row["parity_layers"] = len(rows)
        row["parity_within_1"] = float(np.mean([r.local_within_1 >= 0.999 for r in rows])) if rows else None
        row["parity_worst"] = (min(rows, key=lambda r: r.local_within_1).layer if rows else None)
    return row


def _run_worker(name: str, build: str, tool: str, size: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.applications", "--worker", name, build, tool, str(size)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"name": name, "build": build, "tool": tool, "accepted": False,
                "error": f"worker failed (rc {proc.returncode}): {' | '.join(tail)[:300]}"}
    row = json.loads(lines[-1])
    row["wall_s"] = time.perf_counter() - start
    return row


TOOLS = ("tfq_ext", "tfmot", "ptq", "ptq_plain")


def coverage(names: list[str], size: int, save=None, tools=TOOLS, keep=()) -> list[dict]:
    """One fresh worker per (constructor, build, tool); ``save(rows)`` after each, so a long run keeps its rows.

    Keras 3 builds run tfq_ext QAT only: tfmot takes tf_keras models only, and the Keras 3 path converts to
    tf_keras by config and weights before anything else, so PTQ of a Keras 3 build is the tf_keras PTQ row
    (tests/test_keras3.py checks each entry point on Keras 3 models).
    """
    rows = [r for r in keep if r["tool"] not in tools or r["name"] not in names]  # rows of an earlier run
    for name in names:
        for build in ("tf_keras", "keras3"):
            for tool in tools:
                if build == "keras3" and tool != "tfq_ext":
                    continue
                row = _run_worker(name, build, tool, size)
                log(f"{name:38s} {build:8s} {tool:7s} " + ", ".join(
                    f"{k}={row[k]}" for k in ("accepted", "integer_only", "partitions", "outside", "step_ms",
                                              "peak_rss_mb", "parity_within_1", "error") if k in row))
                rows.append(row)
                if save is not None:
                    save(rows)
    return rows


def _machine() -> dict:
    import importlib.metadata as md

    versions = {p: md.version(p) for p in ("tensorflow", "tf-keras", "keras", "tensorflow-model-optimization",
                                           "ai-edge-litert")}
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "versions": versions}


def main(out_dir, quick: bool = False, command: str = "", parts=("coverage", "accuracy"), archs=None,
         tools=TOOLS, names=None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "applications.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(machine=_machine(), command=command, date=datetime.date.today().isoformat())
    if "coverage" in parts:
        names = list(names or (QUICK if quick else CONSTRUCTORS))
        unknown = [n for n in names if n not in CONSTRUCTORS]
        if unknown:
            raise ValueError(f"`names` has unknown constructors {unknown}; expected names from {list(CONSTRUCTORS)}")
        size = SIZE if not quick else 64

        def save_rows(rows):
            results["coverage"] = {"size": size, "rows": rows}
            _write(results, out_dir)

        partial = tuple(tools) != TOOLS or len(names) < len(CONSTRUCTORS)
        keep = (results.get("coverage") or {}).get("rows", []) if partial else []
        save_rows(coverage(names, size, save_rows, tools, keep))
    if "accuracy" in parts:
        from benchmarks.applications_accuracy import accuracy

        from benchmarks.applications_accuracy import ARCHITECTURES

        def save(partial):
            results["accuracy"] = partial
            _write(results, out_dir)

        accuracy(quick, tuple(archs or ARCHITECTURES), results.get("accuracy"), save)
    _write(results, out_dir)
    return results


def _write(results: dict, out_dir: Path) -> None:
    from benchmarks.applications_report import write_markdown

    (out_dir / "applications.json").write_text(json.dumps(results, indent=1, default=float))
    write_markdown(results, out_dir / "applications.md")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])), default=float))
    else:
        import argparse

        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--quick", action="store_true")
        parser.add_argument("--parts", nargs="+", default=["coverage", "accuracy"])
        parser.add_argument("--arch", nargs="+", help="accuracy part: only these architectures (others kept)")
        parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS),
                            help="coverage part: only these tools (the other tools' rows are kept)")
        parser.add_argument("--names", nargs="+", help="coverage part: only these constructors (other rows kept)")
        parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
        args = parser.parse_args()
        main(args.out, args.quick, " ".join([sys.executable, "-m", "benchmarks.applications", *sys.argv[1:]]),
             tuple(args.parts), args.arch, tuple(args.tools), args.names)
