"""AdaComp vs dense all-reduce vs a no-residual ablation vs fixed top-k, Fashion-MNIST CNN, 4 learners.

Arms, all from the same architecture, seed, data order and optimizer (SGD, momentum 0.9), under a
``MirroredStrategy`` over 4 logical CPU devices (4 learners, global batch 128):
  dense           the strategy's default all-reduce of float32 gradients
  adacomp         AdaComp, L_T = 50 for conv kernels, 500 for fully-connected (biases: 50)
  no_residual     the same selection rule, unsent values dropped (the paper's ablation)
  topk            fixed top-k per layer at adacomp's measured average rate per layer kind, with residual
  adacomp_LT...   optional sweep of the bin lengths
Reported per arm: test accuracy, compression per layer kind (index bits counted, see
``tfq_ext.ops.adacomp.encoded_bits``) and the bytes each learner really sends per step through the all-gather
(int32 entries padded to the longest learner's list, plus a header), against the dense float32 bytes.

The logical devices must be configured before TensorFlow initialises them, so ``main`` runs the arms in a
fresh Python process. Run with ``python -m benchmarks.run --only adacomp [--quick]``.

References:
    Chen et al., "AdaComp", AAAI 2018, arXiv 1712.02679.
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

SEED = 0
BATCH = 128
LEARNERS = 4
LR = 0.05


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- shared by the CNN and the LM benchmark (benchmarks/adacomp_lm.py) ------------------------------------------

def distributed_setup(tf):
    """``LEARNERS`` logical CPU devices (before TensorFlow initialises them), their MirroredStrategy and the
    dataset options that shard by data."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * LEARNERS)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(LEARNERS)])
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy, options


def compressed_optimizer(optimizer, spec, results: dict):
    """(optimizer, compressor) for an arm spec: None (dense), AdaComp kwargs, or "matched" (top-k at the
    adacomp arm's measured rate per layer kind)."""
    from tfq_ext.distribute import AdaComp, TopK, with_adacomp

    if spec is None:
        return optimizer, None
    if spec == "matched":
        compressor = TopK({k: 1.0 / max(v, 1e-12) for k, v in results["adacomp"]["sent_fraction"].items()})
    else:
        spec = dict(spec)
        clipping = spec.pop("learner_clipping", True)
        if spec.pop("momentum_correction", False):  # the user-facing switch: with_adacomp builds the compressor
            wrapped = with_adacomp(optimizer, learner_clipping=clipping, momentum_correction=True, **spec)
            return wrapped, wrapped.adacomp
        compressor = AdaComp(**spec)
        return with_adacomp(optimizer, compressor=compressor, learner_clipping=clipping), compressor
    return with_adacomp(optimizer, compressor=compressor), compressor


def traffic(compressor, n_params: int, logged: list, logged_key: str) -> dict:
    """Bytes per learner and step against dense float32, and per-kind compression from the compressor's report."""
    from tfq_ext.distribute import TopK

    row = {"dense_bytes_per_step": 4.0 * n_params}
    if compressor is None:
        row.update(wire_bytes_per_step=4.0 * n_params, wire_reduction=1.0)
        return row
    report = compressor.report()
    kinds = [k for k in ("conv", "fc", "other") if f"{k}_compression" in report]
    row.update(wire_bytes_per_step=report["wire_bytes_per_step"], wire_reduction=report["wire_reduction"],
               compression={k: report[f"{k}_compression"] for k in kinds},
               sent_fraction={k: report[f"{k}_sent_fraction"] for k in kinds})
    row[logged_key] = logged
    if isinstance(compressor, TopK):
        row["rates"] = dict(compressor.rates)
    return row


def run_fresh(module: str, out_dir: Path, name: str, quick: bool, command: str, args: list) -> dict:
    """Runs ``python -m module RAW *args`` in a fresh process and wraps its JSON into the benchmark report.

    A fresh process because the logical devices cannot be configured once TensorFlow has initialised its devices.
    """
    t0 = time.perf_counter()
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    raw = out_dir / f"{name}.raw.json"
    subprocess.run([sys.executable, "-m", module, str(raw), *args], env=env, cwd=root, check=True)
    setup = json.loads(raw.read_text())
    raw.unlink()
    results = setup.pop("results")
    import tensorflow as tf

    return {"benchmark": name, "quick": quick, "command": command,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "tensorflow": tf.__version__, "cpus": os.cpu_count()},
            "setup": setup, "results": results, "seconds": round(time.perf_counter() - t0, 1)}


def build_cnn(keras):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(256, activation="relu", name="fc1"), layers.Dense(10, name="logits"),
    ], name="fmnist_adacomp_cnn")


def _arms(quick: bool) -> list:
    arms = [("dense", None), ("adacomp", {"bin_sizes": {"conv": 50, "fc": 500, "other": 50}}),
            ("no_residual", {"bin_sizes": {"conv": 50, "fc": 500, "other": 50}, "residual": False}),
            ("topk", "matched")]
    if not quick:
        arms += [("adacomp_LT25_250", {"bin_sizes": {"conv": 25, "fc": 250, "other": 25}}),
                 ("adacomp_LT100_1000", {"bin_sizes": {"conv": 100, "fc": 1000, "other": 100}}),
                 # with_adacomp(..., momentum_correction=True): the SGD momentum on each learner, before the
                 # residual (the fix measured on the Shakespeare LSTM, benchmarks/adacomp_lm.py).
                 ("adacomp_momentum", {"bin_sizes": {"conv": 50, "fc": 500, "other": 50},
                                       "momentum_correction": True})]
    return arms


def run_arms(quick: bool, train_images: int | None = None, epochs: int | None = None, only=None) -> dict:
    """Trains every arm in this process (which must not have initialised TensorFlow's devices yet)."""
    from tfq_ext._keras import keras, tf

    strategy, options = distributed_setup(tf)
    import numpy as np

    from tfq_ext.data import load_fashion_mnist
    from tfq_ext.distribute import AdaCompLogger

    data = load_fashion_mnist(limit_train=train_images or (12000 if quick else None))
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    if quick:
        xt, yt = xt[:2000], yt[:2000]
    epochs = epochs or (2 if quick else 8)
    results = {}
    for name, spec in _arms(quick):
        if only and name not in only:
            continue
        keras.utils.set_random_seed(SEED)
        dataset = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=SEED)
                   .batch(BATCH, drop_remainder=True).with_options(options))
        with strategy.scope():
            model = build_cnn(keras)
            optimizer, compressor = compressed_optimizer(keras.optimizers.SGD(LR, momentum=0.9), spec, results)
            model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
        callbacks = [AdaCompLogger()] if compressor is not None else []
        log(f"{name}: {epochs} epochs on {len(x)} images, {LEARNERS} learners")
        start = time.perf_counter()
        history = model.fit(dataset, epochs=epochs, verbose=0, callbacks=callbacks)
        seconds = time.perf_counter() - start
        accuracy = float(np.mean(np.argmax(model.predict(xt, batch_size=1024, verbose=0), 1) == yt))
        n_params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        row = {"accuracy": accuracy, "train_loss": [float(v) for v in history.history["loss"]],
               "seconds": round(seconds, 1)}
        row.update(traffic(compressor, n_params, callbacks[0].epochs if callbacks else None, "per_epoch"))
        results[name] = row
        log(f"  accuracy {accuracy:.4f}, {row['wire_bytes_per_step']:.0f} bytes/learner/step "
            f"({row['wire_reduction']:.1f}x less than dense), compression {row.get('compression')}, "
            f"{seconds:.0f} s")
    return {"train_images": len(x), "test_images": len(xt), "epochs": epochs, "learners": LEARNERS,
            "global_batch": BATCH, "optimizer": f"SGD(lr={LR}, momentum=0.9)", "results": results}


def main(out_dir, quick: bool = False, command: str = "", train_images: int | None = None,
         epochs: int | None = None, arms=None) -> dict:
    """Runs the arms in a fresh process and writes ``adacomp.json`` / ``adacomp.md`` to ``out_dir``.

    ``train_images`` / ``epochs`` override the sizes (quick: 12000 images, 2 epochs; full: 60000, 8 epochs).
    ``arms``: names of a subset to run (not "topk", which needs the adacomp arm); the other arms already in the
    JSON are kept, and must have been run at the same sizes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    known = [name for name, _ in _arms(quick)]
    if arms and (set(arms) - set(known) or "topk" in arms):
        raise ValueError(f"`arms` must be among {[k for k in known if k != 'topk']}. Received: {list(arms)}")
    args = ["--quick" if quick else "--full", str(train_images or 0), str(epochs or 0), ",".join(arms or [])]
    report = run_fresh("benchmarks.adacomp", out_dir, "adacomp", quick, command, args)
    previous = out_dir / "adacomp.json"
    if arms and previous.exists():
        old = json.loads(previous.read_text())
        if old["setup"]["epochs"] != report["setup"]["epochs"] or \
                old["setup"]["train_images"] != report["setup"]["train_images"]:
            raise ValueError(f"the arms in {previous} were run at other sizes ({old['setup']}); rerun them all")
        merged = {**old["results"], **report["results"]}
        report["results"] = {k: merged[k] for k in known if k in merged}
        report["commands"] = {**old.get("commands", {k: old["command"] for k in old["results"]}),
                              **{k: command for k in arms}}
        report["seconds"] = round(old["seconds"] + report["seconds"], 1)
    (out_dir / "adacomp.json").write_text(json.dumps(report, indent=2))
    (out_dir / "adacomp.md").write_text(_table(report))
    print(_table(report), flush=True)
    return report


def _table(report) -> str:
    setup = report["setup"]
    lines = [f"Fashion-MNIST CNN, {setup['learners']} learners (MirroredStrategy over logical CPUs), "
             f"{setup['train_images']} train / {setup['test_images']} test images, {setup['epochs']} epochs, "
             f"{setup['optimizer']}, global batch {setup['global_batch']}. Compression counts index bits; "
             "bytes are what each learner sends per step (int32 entries + header vs float32 dense).", "",
             "| arm | accuracy | conv compression | fc compression | bias compression | bytes/learner/step | "
             "vs dense |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in report["results"].items():
        comp = row.get("compression", {})
        cells = [f"{comp[k]:.0f}x" if k in comp else "1x" for k in ("conv", "fc", "other")]
        lines.append(f"| {name} | {row['accuracy']:.4f} | {' | '.join(cells)} | {row['wire_bytes_per_step']:.0f} | "
                     f"{row['wire_reduction']:.1f}x |")
    lines.append("")
    if "commands" in report:
        lines += [f"- {arm}: `{cmd}`" for arm, cmd in report["commands"].items()]
        lines += ["", f"Time of the runs: {report['seconds']} s."]
    else:
        lines.append(f"Command: `{report['command']}`; {report['seconds']} s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = run_arms(quick=sys.argv[2] == "--quick", train_images=int(sys.argv[3]) or None,
                   epochs=int(sys.argv[4]) or None,
                   only=[a for a in (sys.argv[5] if len(sys.argv) > 5 else "").split(",") if a])
    Path(sys.argv[1]).write_text(json.dumps(out, default=float))
