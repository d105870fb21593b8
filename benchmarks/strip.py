"""Bytes ``tflite_export.strip`` removes from the frontier benchmark's architectures, with the same outputs.

For each model of ``benchmarks/frontier.py`` (untrained: tensor names and converter metadata do not depend on
the weights) the full-int8 file and the float32 file are converted, stripped, and run on the same inputs; the
benchmark fails if a stripped file computes anything else or changes XNNPACK partitions.

Run with ``python -m benchmarks.run --only strip`` (about a minute).
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import numpy as np

from tfq_ext._keras import keras, tf


def _row(kind: str, content: bytes, x) -> dict:
    import tflite_export

    stripped = tflite_export.strip(content)
    same = bool(np.array_equal(tflite_export.run(content, x), tflite_export.run(stripped, x)))
    partitions = (tflite_export.delegation_report(content)["delegate_partitions"],
                  tflite_export.delegation_report(stripped)["delegate_partitions"])
    if not same or partitions[0] != partitions[1]:
        raise RuntimeError(f"the stripped {kind} file differs: same outputs {same}, partitions {partitions}")
    return {"file": kind, "bytes": len(content), "stripped_bytes": len(stripped),
            "saved_bytes": len(content) - len(stripped), "saved_fraction": 1 - len(stripped) / len(content),
            "same_outputs": same, "partitions": partitions[1]}


def run_model(name: str) -> list[dict]:
    import tflite_export
    from benchmarks.frontier import _build

    keras.utils.set_random_seed(0)
    model = _build(name)
    x = np.random.default_rng(0).random((32, *model.input_shape[1:]), dtype=np.float32)
    int8 = tflite_export.convert(model, representative_data=x)
    float32 = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    return [dict(model=name, **_row("int8", int8, x)), dict(model=name, **_row("float32", float32, x))]


def markdown(result: dict) -> str:
    lines = ["# `tflite_export.strip`: inner tensor names and converter metadata removed", "",
             f"Command: `{result['command']}` ({result['date']}, {result['seconds']:.0f} s). Outputs checked "
             "identical on 32 inputs, XNNPACK partitions unchanged.", "",
             "| model | file | bytes | stripped | saved | saved % |", "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['file']} | {r['bytes']} | {r['stripped_bytes']} | {r['saved_bytes']} | "
                     f"{r['saved_fraction']:.2%} |")
    return "\n".join(lines) + "\n"


def main(out_dir, quick: bool = False, command: str = "") -> dict:
    from benchmarks.frontier import MODELS

    t0 = time.perf_counter()
    models = MODELS[:1] if quick else MODELS
    result = {"benchmark": "strip", "quick": quick, "command": command or "python -m benchmarks.run --only strip",
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "rows": [row for name in models for row in run_model(name)]}
    result["seconds"] = time.perf_counter() - t0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "strip.json").write_text(json.dumps(result, indent=2))
    (out_dir / "strip.md").write_text(markdown(result))
    print(markdown(result), flush=True)
    return result
