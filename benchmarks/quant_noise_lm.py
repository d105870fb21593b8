"""Quant-Noise + iPQ on a small character-level transformer LM (Shakespeare), side by side with plain iPQ.

The transformer is built from plain Embedding / Dense layers (attention math in TF ops), so that its embedding,
attention projections (q, k, v, o) and feed-forward layers are all product-quantized, with the reference's
block sizes: 4 for embeddings and attention projections, 8 for feed-forward layers. Metric: bits per character
(bpc, lower is better) on the held-out last 5% of the corpus.

Run with ``python -m benchmarks.run --only quant_noise_lm [--quick]`` (needs ``make bench-data``).
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from tfq_ext._keras import keras, tf

SEED = 0


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


def main(out_dir, quick: bool = False, command: str = "") -> dict:
    from tfq_ext import model_size
    from tfq_ext.data import char_lm_split, load_shakespeare
    from tfq_ext.quant_noise import add_quant_noise, quantize_pq

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    warnings.filterwarnings("ignore", message=".*K clamped.*")
    seq_len = 64
    text = load_shakespeare()
    vocab, x, y, xt, yt = char_lm_split(text, seq_len=seq_len, max_sequences=None)
    train_n = 4000 if quick else 16000
    x, y = x[:train_n], y[:train_n]
    xt, yt = xt[:500 if quick else 2000], yt[:500 if quick else 2000]
    epochs = 1 if quick else 3
    finetune = 0.1 if quick else 0.25
    block_sizes = {"embedding": 4, "dense": 8}
    block_sizes.update({f"attn{i}_{n}": 4 for i in range(2) for n in "qkvo"})
    noise_rate = 0.1
    results = {}

    def train(model):
        model.compile(keras.optimizers.Adam(2e-3), _loss())
        model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
        return model

    log(f"float transformer: {epochs} epochs on {len(x)} windows of {seq_len} characters")
    keras.utils.set_random_seed(SEED)
    float_model = train(build_transformer(len(vocab), seq_len))
    float_bytes = model_size(float_model).bytes
    results["float"] = {"bpc": bits_per_char(float_model, xt, yt), "bytes": float_bytes, "compression": 1.0}
    log(f"  float bpc {results['float']['bpc']:.3f}, {float_bytes} bytes")

    log(f"Quant-Noise transformer (proxy, p={noise_rate})")
    keras.utils.set_random_seed(SEED)
    qn_model = train(add_quant_noise(build_transformer(len(vocab), seq_len), noise_rate=noise_rate,
                                     block_sizes=block_sizes))
    results["quant_noise"] = {"bpc": bits_per_char(qn_model, xt, yt), "bytes": float_bytes, "compression": 1.0}
    log(f"  Quant-Noise bpc {results['quant_noise']['bpc']:.3f}")

    # Stages as in the paper: feed-forward layers, then attention projections, then embeddings and output.
    stages = [[f"ffn{i}_{n}" for i in range(2) for n in ("in", "out")],
              [f"attn{i}_{n}" for i in range(2) for n in "qkvo"],
              ["tok_emb", "pos_emb", "logits"]]
    for arm, source in (("plain_ipq", float_model), ("quant_noise_ipq", qn_model)):
        log(f"{arm}: iPQ (K=256) without fine-tuning, then with {finetune} epoch(s) per stage")
        before, _ = quantize_pq(source, n_centroids=256, block_sizes=block_sizes, stages=stages, loss=_loss(),
                                verbose=0)
        after, _ = quantize_pq(source, x, y, n_centroids=256, block_sizes=block_sizes, stages=stages,
                               finetune_epochs=finetune, batch_size=64, loss=_loss(),
                               optimizer=lambda: keras.optimizers.Adam(5e-4), metrics=(), verbose=0)
        size = model_size(after)
        results[arm] = {"bpc_before_finetune": bits_per_char(before, xt, yt), "bpc": bits_per_char(after, xt, yt),
                        "bytes": size.bytes, "compression": float_bytes / size.bytes}
        log(f"  bpc {results[arm]['bpc_before_finetune']:.3f} -> {results[arm]['bpc']:.3f}, {size.bytes} bytes "
            f"({results[arm]['compression']:.1f}x)")

    report = {"benchmark": "quant_noise_lm", "quick": quick, "command": command,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "tensorflow": tf.__version__},
              "setup": {"train_windows": len(x), "test_windows": len(xt), "seq_len": seq_len, "epochs": epochs,
                        "finetune_epochs_per_stage": finetune, "noise_rate": noise_rate, "block_sizes": block_sizes,
                        "vocab": len(vocab), "corpus_chars": len(text)},
              "results": results, "seconds": round(time.perf_counter() - t0, 1)}
    (out_dir / "quant_noise_lm.json").write_text(json.dumps(report, indent=2))
    lines = ["| arm | bpc before fine-tune | bpc | bytes | compression vs float32 |", "|---|---:|---:|---:|---:|"]
    for name, row in results.items():
        before = row.get("bpc_before_finetune")
        lines.append(f"| {name} | {'-' if before is None else f'{before:.3f}'} | {row['bpc']:.3f} | {row['bytes']} | "
                     f"{row['compression']:.1f}x |")
    (out_dir / "quant_noise_lm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return report
