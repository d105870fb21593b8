"""Which Keras 3 ``keras.applications`` models convert to tf_keras, and how close the outputs are.

Every application constructor that the installed Keras 3 exports is built with ``weights=None`` at a small
input size (the smallest the constructor accepts, at most 32x32 where allowed), 10 classes and logits out.
Weights that were initialized to a constant (biases, batch-norm statistics, layer-scale gammas, ...) are
perturbed first, so that a weight copied to the wrong place changes the outputs. Each model is converted with
``tfq_ext._keras3.convert_keras3_model`` and both models run in inference mode on the same random inputs in
[0, 255]; the reported difference is max |y_keras3 - y_tf_keras| / max(1, max |y_keras3|), for the model's
outputs and for the output of every layer both models have under one name, and a model passes at 1e-5.
MobileNetV3 is also built without its preprocessing layer and in the minimalistic variant.

Run with ``python -m benchmarks.keras3_coverage [--quick]`` (quick: one model per family).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfq_ext._keras import tf  # noqa: E402  (chooses tf_keras before Keras 3 is imported)

TOLERANCE = 1e-5
BATCH = 2
# Smallest input side each family accepts with weights=None (Keras 3 checks it in obtain_input_shape).
MIN_SIDE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
QUICK = ("ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0", "InceptionResNetV2", "InceptionV3",
         "MobileNet", "MobileNetV2", "MobileNetV3Small", "NASNetMobile", "ResNet50", "ResNet50V2", "VGG16",
         "Xception")
VARIANTS = {"MobileNetV3Small": [{}, {"include_preprocessing": False}, {"minimalistic": True}],
            "MobileNetV3Large": [{}, {"include_preprocessing": False}, {"minimalistic": True}]}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def constructors() -> dict:
    """Every model constructor ``keras.applications`` exports (functions whose names start upper case)."""
    import keras

    found = {}
    for name in dir(keras.applications):
        fn = getattr(keras.applications, name)
        if name[:1].isupper() and inspect.isfunction(fn):
            found[name] = fn
    return dict(sorted(found.items()))


def perturb_constant_weights(model, seed: int = 0) -> None:
    """Adds noise to every float weight that holds one value everywhere, keeping positive ones positive."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = np.asarray(variable)
        if value.size and np.issubdtype(value.dtype, np.floating) and np.all(value == value.flat[0]):
            noise = rng.uniform(-0.1, 0.1, value.shape) * max(1.0, abs(float(value.flat[0])))
            variable.assign((value + noise).astype(value.dtype))


def relative_difference(expected, actual) -> float:
    """max |expected - actual| / max(1, max |expected|) over all outputs."""
    expected = [np.asarray(e) for e in tf.nest.flatten(expected)]
    actual = [np.asarray(a) for a in tf.nest.flatten(actual)]
    scale = max(1.0, max(float(np.max(np.abs(e))) for e in expected))
    return max(float(np.max(np.abs(e - a))) for e, a in zip(expected, actual)) / scale


def _activation_name(layer) -> str:
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    return "swish" if name == "silu" else name  # the same function in both: tf.nn.silu


def layerwise_difference(model, converted, x) -> tuple[float, int]:
    """Largest relative difference over the outputs of the layers both models have under one name.

    A deep randomly initialized network can forget its input (EfficientNet's outputs barely move when its first
    layer is wrong), so the final outputs alone would miss an early error. Layers whose tf_keras twin differs in
    class or activation (an activation rebuilt as separate layers), nested models and layers called more than once
    are skipped.
    """
    import keras
    import tf_keras

    pairs = []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.InputLayer, keras.Model)) or layer.name not in {
                t.name for t in converted.layers}:  # a nested model's `output` is that of its own graph
            continue
        twin = converted.get_layer(layer.name)
        if type(twin).__name__ != type(layer).__name__ or _activation_name(twin) != _activation_name(layer):
            continue
        try:
            outputs = (layer.output, twin.output)
        except (AttributeError, ValueError):  # called more than once: no single output
            continue
        if not isinstance(outputs[0], (list, tuple, dict)):
            pairs.append(outputs)
    if not pairs:
        return 0.0, 0
    k3_probe = keras.Model(model.inputs, [a for a, _ in pairs])
    tf_probe = tf_keras.Model(converted.inputs, [b for _, b in pairs])
    xs = x if isinstance(x, (list, tuple)) else [x]
    worst = max(relative_difference(e, a) for e, a in zip(k3_probe(xs, training=False), tf_probe(xs, training=False)))
    return worst, len(pairs)


def check(name: str, fn, options: dict) -> dict:
    import keras

    from tfq_ext._keras3 import convert_keras3_model

    side = MIN_SIDE.get(name, 32)
    kwargs = {"weights": None, "input_shape": (side, side, 3), "classes": 10, **options}
    if "classifier_activation" in inspect.signature(fn).parameters:
        kwargs["classifier_activation"] = None
    row = {"constructor": name, "options": options, "input_side": side}
    start = time.perf_counter()
    try:
        keras.utils.set_random_seed(0)
        model = fn(**kwargs)
        perturb_constant_weights(model)
        row["keras3_layers"] = len(model.layers)
        row["parameters"] = int(model.count_params())
        built = time.perf_counter()
        converted = convert_keras3_model(model)
        row["convert_s"] = round(time.perf_counter() - built, 2)
        x = np.random.default_rng(1).uniform(0, 255, (BATCH, side, side, 3)).astype("float32")
        row["max_rel_diff"] = relative_difference(model(x, training=False), converted(x, training=False))
        row["max_layer_rel_diff"], row["layers_compared"] = layerwise_difference(model, converted, x)
        row["converted"] = max(row["max_rel_diff"], row["max_layer_rel_diff"]) <= TOLERANCE
        row["tf_keras_layers"] = len(converted.layers)
    except Exception as exc:  # noqa: BLE001 - the table records what failed
        row.update(converted=False, error=f"{type(exc).__name__}: {exc}"[:400])
    row["total_s"] = round(time.perf_counter() - start, 2)
    gc.collect()
    return row


def _markdown(report: dict) -> str:
    lines = ["| constructor | options | input | parameters | converted | max relative diff: outputs | "
             "layers (compared) | convert (s) |", "|---|---|---:|---:|---|---:|---:|---:|"]
    for row in report["results"]:
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "-"
        diff = f"{row['max_rel_diff']:.1e}" if "max_rel_diff" in row else row.get("error", "-")
        layers = f"{row['max_layer_rel_diff']:.1e} ({row['layers_compared']})" if "layers_compared" in row else "-"
        lines.append(f"| {row['constructor']} | {options} | {row['input_side']} | {row.get('parameters', '-')} | "
                     f"{'yes' if row['converted'] else 'no'} | {diff} | {layers} | {row.get('convert_s', '-')} |")
    passed = sum(row["converted"] for row in report["results"])
    lines += ["", f"{passed} of {len(report['results'])} builds convert with the outputs of the model and of every "
              f"layer compared within {TOLERANCE:g} (relative to max(1, max |output|)); Keras "
              f"{report['machine']['keras']}, weights=None, 10 classes, logits, batch {BATCH} of uniform [0, 255) "
              f"inputs, inference mode. {report['seconds']:.0f} s in total."]
    return "\n".join(lines) + "\n"


def main(out_dir, quick: bool = False, command: str = "") -> dict:
    import keras

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for name, fn in constructors().items():
        if quick and name not in QUICK:
            continue
        for options in VARIANTS.get(name, [{}]):
            row = check(name, fn, options)
            log(f"{name} {options or ''}: converted={row['converted']} diff={row.get('max_rel_diff', '-')} "
                f"{row.get('error', '')} ({row['total_s']} s)")
            rows.append(row)
            keras.backend.clear_session()
    report = {"benchmark": "keras3_coverage", "quick": quick, "command": command,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "tensorflow": tf.__version__, "keras": keras.__version__},
              "tolerance": TOLERANCE, "results": rows, "seconds": round(time.perf_counter() - t0, 1)}
    (out_dir / "keras3_coverage.json").write_text(json.dumps(report, indent=2))
    (out_dir / "keras3_coverage.md").write_text(_markdown(report))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one model per family")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    main(args.out, quick=args.quick, command=" ".join([sys.executable, "-m", "benchmarks.keras3_coverage",
                                                       *sys.argv[1:]]))
