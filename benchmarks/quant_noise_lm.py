"""Quant-Noise + iPQ vs plain iPQ on a character-level transformer LM (Shakespeare), paired over seeds.

The recipe of the papers (and of ``benchmarks/quant_noise_pq.py``): Quant-Noise as a fine-tune of a trained float
model, with the "pq" noise (a Bernoulli(p) subset of blocks replaced by its nearest centroid, centroids
re-clustered every 100 batches with ``QuantNoiseCentroidRefresh``) in the block layout of the iPQ that follows.

For each seed, from one float transformer trained ``float_steps`` steps (Adam, warm-up then cosine decay to 0;
its test bpc is logged along the way to show how far from converged it is):
  plain -> iPQ        the float model fine-tuned ``finetune_steps`` more steps without noise, then iPQ
  Quant-Noise -> iPQ  the float model fine-tuned the same steps with "pq" noise at per-kind rates, then the same
                      iPQ (same stages, same centroid fine-tuning data, steps and optimizer)
at two compression levels (K=256 with blocks of 4 for embeddings / attention projections and 8 for feed-forward /
softmax layers; K=64 with blocks of 8 / 16). iPQ: three stages as in the paper (feed-forward, attention, embeddings and
softmax), ``stage_steps`` steps of centroid fine-tuning after each. Seed 0 also runs the noise-rate ablation
(one rate for every layer) at the first level.

The transformer is built from plain Embedding / Dense layers (attention math in TF ops), so that its embedding,
attention projections (q, k, v, o) and feed-forward layers are all product-quantized. Metric: bits per character
(bpc, lower is better) on windows of the held-out last 5% of the corpus. Sizes: ``tfq_ext.model_size``
(indices + float16 codebooks + float32 biases / LayerNorm).

Run with ``python -m benchmarks.run --only quant_noise_lm [--quick]`` (needs ``make bench-data``).
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import resource
import time
import warnings
from pathlib import Path

import numpy as np

from tfq_ext._keras import keras, tf

SEQ_LEN, BATCH = 64, 64
# (embedding + attention block, feed-forward + softmax block, K). Larger blocks alone do not shrink this small
# model: at K=256 its codebooks (K x d float16 per layer) grow as fast as its indices shrink (d 8/16: 129.6 KB
# vs 127.2 KB at d 4/8), so the second level also has fewer centroids.
LEVELS = {"K256_d4/8": (4, 8, 256), "K64_d8/16": (8, 16, 64)}
NOISE = {"dense": 0.2, "embedding": 0.1, **{f"attn{i}_{n}": 0.1 for i in range(2) for n in "qkvo"}}
ABLATION_RATES = (0.5,)  # one rate for every layer, seed 0, first level


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_transformer(vocab: int, seq_len: int, dim: int = 128, heads: int = 4, layers: int = 2) -> keras.Model:
    """A pre-LN causal transformer made of Embedding/Dense layers (so that every projection is quantizable)."""
    L = keras.layers
    tokens = keras.Input((seq_len,), dtype="int32")
    x = L.Embedding(vocab, dim, name="tok_emb")(tokens)
    position_ids = tf.zeros_like(tokens) + tf.range(seq_len)[None, :]  # a graph tensor, so pos_emb is a layer
    positions = L.Embedding(seq_len, dim, name="pos_emb")(position_ids)
    x = x + positions
    mask = tf.constant(np.triu(np.full((seq_len, seq_len), -1e9, np.float32), k=1))
    head_dim = dim // heads
    for i in range(layers):
        h = L.LayerNormalization(name=f"ln{i}a")(x)
        q, k, v = (L.Dense(dim, name=f"attn{i}_{n}")(h) for n in "qkv")

        def split(t):
            return tf.transpose(tf.reshape(t, (-1, seq_len, heads, head_dim)), (0, 2, 1, 3))

        scores = tf.matmul(split(q), split(k), transpose_b=True) / math.sqrt(head_dim) + mask
        attended = tf.matmul(tf.nn.softmax(scores, axis=-1), split(v))
        attended = tf.reshape(tf.transpose(attended, (0, 2, 1, 3)), (-1, seq_len, dim))
        x = x + L.Dense(dim, name=f"attn{i}_o")(attended)
        h = L.LayerNormalization(name=f"ln{i}b")(x)
        x = x + L.Dense(dim, name=f"ffn{i}_out")(L.Dense(4 * dim, activation="relu", name=f"ffn{i}_in")(h))
    x = L.LayerNormalization(name="ln_out")(x)
    return keras.Model(tokens, L.Dense(vocab, name="logits")(x), name="char_transformer")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def bits_per_char(model, x, y) -> float:
    logits = model.predict(x, batch_size=256, verbose=0)
    nats = float(np.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
    return nats / math.log(2.0)


def cosine_adam(peak: float, steps: int, warmup: int = 0):
    """Adam with linear warm-up to ``peak`` and cosine decay to 0 at ``steps`` (gradients clipped at norm 1)."""
    schedule = keras.optimizers.schedules.CosineDecay(0.0 if warmup else peak, max(1, steps - warmup),
                                                      warmup_target=peak if warmup else None,
                                                      warmup_steps=warmup)
    return keras.optimizers.Adam(schedule, global_clipnorm=1.0)


def train_float(vocab, x, y, xt, yt, steps: int, seed: int, evals: int = 4):
    """The float transformer: ``steps`` steps of batch 64 over shuffled windows; test bpc after each chunk."""
    keras.utils.set_random_seed(seed)
    model = build_transformer(vocab, SEQ_LEN)
    model.compile(cosine_adam(2e-3, steps, warmup=min(200, steps // 10)), _loss())
    data = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).repeat()
            .batch(BATCH, drop_remainder=True))
    chunk = max(1, steps // evals)
    curve = []
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        model.fit(data, steps_per_epoch=n, epochs=1, verbose=0)
        done += n
        curve.append([done, bits_per_char(model, xt, yt)])
        log(f"    float step {done}/{steps}: test bpc {curve[-1][1]:.4f}")
    return model, curve


def _copy(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def finetune(model, x, y, steps: int, seed: int, noise_rate=None, block_sizes=None, k: int = 256):
    """``steps`` more steps (Adam 5e-4, cosine to 0) of a copy of ``model``; with "pq" Quant-Noise when
    ``noise_rate`` is given (``k`` centroids, as the iPQ that follows; refreshed every 100 batches)."""
    from tfq_ext.quant_noise import QuantNoiseCentroidRefresh, add_quant_noise

    keras.utils.set_random_seed(seed)
    tuned = _copy(model) if noise_rate is None else add_quant_noise(model, noise_rate=noise_rate, noise="pq",
                                                                    block_sizes=block_sizes, n_centroids=k)
    tuned.compile(cosine_adam(5e-4, steps), _loss())
    rows = np.random.default_rng(seed).permutation(len(x))[:steps * BATCH]
    callbacks = [] if noise_rate is None else [QuantNoiseCentroidRefresh(every_n_batches=100)]
    tuned.fit(x[rows], y[rows], batch_size=BATCH, epochs=1, verbose=0, callbacks=callbacks)
    return tuned


def ipq(model, x, y, block_sizes, stages, stage_steps: int, seed: int, k: int = 256):
    """(model, stage records): iPQ with ``k`` centroids per layer in ``stages``, ``stage_steps`` steps of centroid
    fine-tuning after each."""
    from tfq_ext.quant_noise import quantize_pq

    rows = np.random.default_rng(seed + 1000).permutation(len(x))[:stage_steps * BATCH]
    keras.utils.set_random_seed(seed)
    after, records = quantize_pq(model, x[rows], y[rows], n_centroids=k, block_sizes=block_sizes, stages=stages,
                                 finetune_epochs=1, batch_size=BATCH, loss=_loss(), seed=seed,
                                 optimizer=lambda: cosine_adam(3e-4, stage_steps), metrics=(), verbose=0)
    return after, records


def _block_sizes(level):
    small, large, _ = LEVELS[level]
    sizes = {"embedding": small, "dense": large}
    sizes.update({f"attn{i}_{n}": small for i in range(2) for n in "qkvo"})
    return sizes


def _stats(values):
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "values": [float(v) for v in values]}


def main(out_dir, quick: bool = False, command: str = "", seeds: int | None = None) -> dict:
    from tfq_ext import model_size
    from tfq_ext.data import char_lm_split, load_shakespeare

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*K clamped.*")
    text = load_shakespeare()
    vocab, x, y, xt, yt = char_lm_split(text, seq_len=SEQ_LEN)
    xt, yt = xt[:300 if quick else 2000], yt[:300 if quick else 2000]
    seeds = seeds or (1 if quick else 3)
    float_steps, finetune_steps, stage_steps = (120, 30, 20) if quick else (2000, 300, 150)
    levels = list(LEVELS)[:1] if quick else list(LEVELS)
    stages = [[f"ffn{i}_{n}" for i in range(2) for n in ("in", "out")],
              [f"attn{i}_{n}" for i in range(2) for n in "qkvo"],
              ["tok_emb", "pos_emb", "logits"]]
    runs = []
    for seed in range(seeds):
        log(f"seed {seed}: float transformer, {float_steps} steps of {BATCH} x {SEQ_LEN} characters")
        float_model, curve = train_float(len(vocab), x, y, xt, yt, float_steps, seed)
        run = {"seed": seed, "float": {"bpc": curve[-1][1], "curve": curve, "bytes": model_size(float_model).bytes},
               "arms": {}}
        arms = [("plain", level, None) for level in levels] + [("quant_noise", level, NOISE) for level in levels]
        if seed == 0:
            arms += [(f"quant_noise_p{rate:g}", levels[0], rate) for rate in ABLATION_RATES]
        for arm, level, rate in arms:
            sizes = _block_sizes(level)
            start = time.perf_counter()
            k = LEVELS[level][2]
            tuned = finetune(float_model, x, y, finetune_steps, seed, noise_rate=rate, block_sizes=sizes, k=k)
            tuned_bpc = bits_per_char(tuned, xt, yt)
            after, _ = ipq(tuned, x, y, sizes, stages, stage_steps, seed, k=k)
            size = model_size(after)
            row = {"level": level, "noise_rate": rate, "bpc_after_finetune": tuned_bpc, "bpc": bits_per_char(after, xt, yt),
                   "bytes": size.bytes, "compression": run["float"]["bytes"] / size.bytes,
                   "seconds": round(time.perf_counter() - start, 1)}
            run["arms"][f"{arm}@{level}"] = row
            log(f"  {arm}@{level}: fine-tuned {tuned_bpc:.4f}, iPQ {row['bpc']:.4f} bpc, {size.bytes} B ({row['compression']:.1f}x), {row['seconds']:.0f} s")
            keras.backend.clear_session()
        runs.append(run)
    summary = {"float": _stats([r["float"]["bpc"] for r in runs]), "arms": {}, "paired": {}}
    for key in runs[0]["arms"]:
        present = [r["arms"][key] for r in runs if key in r["arms"]]
        summary["arms"][key] = {field: _stats([row[field] for row in present])
                                for field in ("bpc_after_finetune", "bpc")}
        summary["arms"][key].update(bytes=present[0]["bytes"], compression=present[0]["compression"],
                                    seeds=len(present))
    for level in levels:
        diffs = [r["arms"][f"quant_noise@{level}"]["bpc"] - r["arms"][f"plain@{level}"]["bpc"] for r in runs]
        summary["paired"][level] = _stats(diffs)
    report = {"benchmark": "quant_noise_lm", "quick": quick, "command": command,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "tensorflow": tf.__version__},
              "setup": {"train_windows": len(x), "test_windows": len(xt), "seq_len": SEQ_LEN, "batch": BATCH,
                        "float_steps": float_steps, "finetune_steps": finetune_steps, "stage_steps": stage_steps,
                        "levels": {k: LEVELS[k] for k in levels}, "noise_rates": NOISE, "noise": "pq",
                        "ablation_rates": ABLATION_RATES, "stages": stages, "vocab": len(vocab),
                        "corpus_chars": len(text), "seeds": seeds},
              "runs": runs, "summary": summary, "seconds": round(time.perf_counter() - t0, 1),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    name = "quant_noise_lm_quick" if quick else "quant_noise_lm"
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{name}.md").write_text(_table(report))
    print(_table(report), flush=True)
    return report


def _table(report) -> str:
    setup, summary = report["setup"], report["summary"]

    def cell(stat):
        return f"{stat['mean']:.4f} ± {stat['std']:.4f}" if len(stat["values"]) > 1 else f"{stat['mean']:.4f}"

    lines = [f"Char transformer (2 layers, d=128, context {setup['seq_len']}), {setup['seeds']} seed(s); float "
             f"{setup['float_steps']} steps of batch {setup['batch']}, fine-tune {setup['finetune_steps']} steps, "
             f"iPQ (levels: K and block sizes) in 3 stages with {setup['stage_steps']} centroid fine-tuning steps each. Test bpc on "
             f"{setup['test_windows']} held-out windows (mean ± std over seeds; lower is better).", "",
             f"float: {cell(summary['float'])} bpc", "",
             "| arm | seeds | after fine-tune (float weights) | iPQ | bytes | compression |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, row in summary["arms"].items():
        lines.append(f"| {key} | {row['seeds']} | {cell(row['bpc_after_finetune'])} | {cell(row['bpc'])} | {row['bytes']} | "
                     f"{row['compression']:.1f}x |")
    lines += ["", "Quant-Noise + iPQ minus plain iPQ, paired by seed (bpc; negative = Quant-Noise better):", ""]
    for level, stat in summary["paired"].items():
        lines.append(f"- {level}: {stat['mean']:+.4f} ± {stat['std']:.4f} (seeds: "
                     + ", ".join(f"{v:+.4f}" for v in stat["values"]) + ")")
    curve = report["runs"][0]["float"]["curve"]
    lines += ["", "Float test bpc over training (seed 0): " + ", ".join(f"step {s}: {b:.4f}" for s, b in curve),
              "", f"Command: `{report['command']}`; {report['seconds']:.0f} s, peak RSS {report['peak_rss_mib']} MiB."]
    return "\n".join(lines) + "\n"
