"""Knowledge distillation in ``compress_model`` (``distill=True``) vs the labels alone, on one float model.

The conv-BN Fashion-MNIST CNN of ``benchmarks/frontier.py`` (its sizes: 30000 train images, 15 float epochs,
2 fine-tune epochs per candidate, 5000 validation images) is trained once; ``compress_model`` then runs the
qat_int8, DiffQ and KQ candidates and the tfmot QAT reference three times on that one model: without
distillation, with ``DistillationLoss(alpha=0.5, temperature=2)`` (the default of ``distill=True``) and with
``alpha=0, temperature=1`` (distillation alone). Every accuracy is the candidate's file run in ai-edge-litert.
One seed: differences of a few tenths of a point are within the 5000 images' sampling noise (binomial SE about
0.4 points).

    python -m benchmarks.distill          # about 30 min on 2 CPU cores
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

CONFIGS = (("labels", None), ("alpha 0.5, T 2", (0.5, 2.0)), ("alpha 0, T 1", (0.0, 1.0)))
METHODS = ["qat_int8", "diffq", "kq", "tfmot_qat"]


def run(quick: bool = False) -> dict:
    import tfq_ext.compress as compress
    from benchmarks import frontier
    from tfq_ext._keras import keras

    name = "fmnist_cnn"
    n_train, float_epochs, epochs, batch = frontier.SIZES[name]
    if quick:
        float_epochs, epochs = 1, 0.25
    x, y, xv, yv = frontier._data(name, quick)
    keras.utils.set_random_seed(0)
    model = frontier._build(name)
    steps = float_epochs * -(-len(x) // batch)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps)), frontier._loss())
    model.fit(x, y, batch_size=batch, epochs=float_epochs, verbose=2)
    rows, defaults = {}, (compress._DISTILL_ALPHA, compress._DISTILL_T)
    try:
        for label, setting in CONFIGS:
            if setting is not None:
                compress._DISTILL_ALPHA, compress._DISTILL_T = setting
            t0 = time.perf_counter()
            result = compress.compress_model(model, (x, y), (xv, yv), methods=METHODS, epochs=epochs,
                                             batch_size=batch, latency_rounds=0, distill=setting is not None,
                                             verbose=1)
            rows[label] = {"seconds": round(time.perf_counter() - t0), "float": result.float["accuracy"],
                           "candidates": {c.name: {"accuracy": c.accuracy, "bytes": c.bytes}
                                          for c in result.candidates if c.ok}}
    finally:
        compress._DISTILL_ALPHA, compress._DISTILL_T = defaults
    return {"model": name, "train_images": len(x), "validation_images": len(xv), "epochs": epochs, "runs": rows}


def markdown(result: dict, command: str) -> str:
    runs = result["runs"]
    labels = list(runs)
    names = list(runs[labels[0]]["candidates"])
    lines = ["# Knowledge distillation in compress_model vs the labels alone", "",
             f"Command: `{command}`. Model: {result['model']} ({result['train_images']} train images, "
             f"{result['epochs']:g} fine-tune epochs per candidate), accuracy of each file on "
             f"{result['validation_images']} Fashion-MNIST test images; float32 file "
             f"{runs[labels[0]]['float']:.4f}. One seed.", "",
             "| candidate | " + " | ".join(f"{label} accuracy (bytes)" for label in labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for n in names:
        cells = []
        for label in labels:
            c = runs[label]["candidates"].get(n)
            cells.append("-" if c is None else f"{c['accuracy']:.4f} ({c['bytes']})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    ours = [n for n in names if n != "tfmot_qat"]
    lines += ["", "Mean accuracy of the tfq_ext candidates (the tfmot reference always trains on the labels): " +
              ", ".join(f"{label} {np.mean([runs[label]['candidates'][n]['accuracy'] for n in ours]):.4f}"
                        for label in labels) + "."]
    return "\n".join(lines) + "\n"


def main(out_dir, quick: bool = False, command: str = "") -> dict:
    result = run(quick)
    result["command"] = command or " ".join([sys.executable, "-m", "benchmarks.distill"])
    out = Path(out_dir)
    (out / "distill.json").write_text(json.dumps(result, indent=2))
    (out / "distill.md").write_text(markdown(result, result["command"]))
    print(markdown(result, result["command"]))
    return result


if __name__ == "__main__":
    main(Path(__file__).resolve().parent / "results")
