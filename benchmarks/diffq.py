"""DiffQ vs uniform QAT (straight-through) vs post-training quantization, at the same size accounting.

Two tasks, each from one float checkpoint (same architecture and seed for every arm):
  Fashion-MNIST CNN (test accuracy) and a Shakespeare character LSTM (test bits per character).
Arms:
  float          trained ``epochs`` + ``finetune`` (the reference every arm is compared with)
  ptq_<b>        the final float model, weights uniformly quantized per tensor at b bits, no training
  qat_<b>        the float checkpoint at ``epochs``, fine-tuned ``finetune`` with uniform b-bit weights (STE)
  diffq_p<p>     the same checkpoint, fine-tuned ``finetune`` with DiffQ at size penalty p (bits learned)
Sizes are ``tfq_ext.diffq.true_size``: packed codes + per-tensor ranges + (DiffQ) bits fields and headers, every
other parameter float32. Quantized weights: the kernels (Conv/Dense kernels, embeddings, LSTM kernels).

Run with ``python -m benchmarks.run --only diffq [--quick]``.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from tfq_ext._keras import keras, tf

SEED = 0
BITS = (2, 3, 4, 8)
DIFFQ = {"group_size": 16, "min_bits": 2, "max_bits": 8, "init_bits": 6, "noise": "gaussian", "grid": "range",
         "min_size": 0.0}
BITS_LR = 3e-2  # the reference's 1e-3 assumes hundreds of epochs; these fine-tunes are a few hundred steps
LAYERS = keras.layers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# --- tasks ----------------------------------------------------------------------------------------------------

def build_cnn() -> keras.Model:
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        LAYERS.Conv2D(32, 3, padding="same", activation="relu", name="conv1"), LAYERS.MaxPooling2D(),
        LAYERS.Conv2D(64, 3, padding="same", activation="relu", name="conv2"), LAYERS.MaxPooling2D(),
        LAYERS.Flatten(), LAYERS.Dense(128, activation="relu", name="fc1"), LAYERS.Dense(10, name="logits"),
    ], name="fmnist_cnn")


def build_lstm(vocab: int, units: int = 128) -> keras.Model:
    return keras.Sequential([
        keras.Input((None,), dtype="int32"), LAYERS.Embedding(vocab, 32, name="embed"),
        LAYERS.LSTM(units, return_sequences=True, name="lstm"), LAYERS.Dense(vocab, name="head"),
    ], name="char_lstm")


def _accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=1000, verbose=0), axis=-1) == y))


def _bits_per_char(model, x, y) -> float:
    logits = model.predict(x, batch_size=256, verbose=0)
    nats = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    return float(np.mean(nats.numpy()) / math.log(2))


class Task:
    """Data, model, training budget and metric of one benchmark task."""

    def __init__(self, name, build, data, metric, metric_name, higher_is_better, epochs, finetune, lr, batch,
                 cosine_finetune=False, bits=BITS):
        self.name, self.build, self.metric, self.metric_name = name, build, metric, metric_name
        self.x, self.y, self.xt, self.yt = data
        self.higher_is_better, self.epochs, self.finetune, self.lr, self.batch = (higher_is_better, epochs,
                                                                                  finetune, lr, batch)
        self.cosine_finetune = cosine_finetune
        self.bits = tuple(bits)

    def optimizer(self, epochs, finetune: bool = True):
        """Adam at ``lr``; a fine-tune of a task with ``cosine_finetune`` decays it to 0 over its steps."""
        if not (finetune and self.cosine_finetune):
            return keras.optimizers.Adam(self.lr)
        steps = int(math.ceil(len(self.x) * epochs / self.batch))
        return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(self.lr, steps))

    def fit(self, model, epochs, optimizer=None, callbacks=(), finetune: bool = True):
        """Trains ``epochs`` epochs (a fraction trains on that share of the data, once)."""
        model.compile(optimizer or self.optimizer(epochs, finetune), _loss())
        whole, part = int(epochs), epochs - int(epochs)
        if whole:
            model.fit(self.x, self.y, batch_size=self.batch, epochs=whole, verbose=0, callbacks=list(callbacks))
        if part > 1e-6:
            n = max(self.batch, int(len(self.x) * part))
            model.fit(self.x[:n], self.y[:n], batch_size=self.batch, epochs=1, verbose=0, callbacks=list(callbacks))
        return model

    def evaluate(self, model) -> float:
        return self.metric(model, self.xt, self.yt)


def fashion_task(quick: bool) -> Task:
    from tfq_ext.data import load_fashion_mnist

    data = load_fashion_mnist(limit_train=8000 if quick else 30000)
    xt, yt = (data.x_test[:2000], data.y_test[:2000]) if quick else (data.x_test, data.y_test)
    return Task("fashion_mnist", build_cnn, (data.x_train, data.y_train, xt, yt), _accuracy, "accuracy", True,
                epochs=1 if quick else 3, finetune=1 if quick else 1.5, lr=1e-3, batch=128)


def shakespeare_task(quick: bool) -> Task:
    from tfq_ext.data import char_lm_split, load_shakespeare

    text = load_shakespeare()
    vocab, x, y, xt, yt = char_lm_split(text[:(300_000 if quick else 1_000_000)], seq_len=64)
    # A contiguous slice of the works; the test windows are the slice's last 5% (no overlap with training).
    return Task("shakespeare", lambda: build_lstm(len(vocab)), (x, y, xt, yt), _bits_per_char, "bits_per_char",
                False, epochs=1 if quick else 4, finetune=0.5 if quick else 1.0, lr=3e-3, batch=64)


def transformer_task(quick: bool) -> Task:
    """The char transformer of ``benchmarks/quant_noise_lm.py`` (2 layers, d=128), on the whole works."""
    from benchmarks.quant_noise_lm import SEQ_LEN, build_transformer
    from tfq_ext.data import char_lm_split, load_shakespeare

    vocab, x, y, xt, yt = char_lm_split(load_shakespeare(), seq_len=SEQ_LEN)
    n = 4000 if quick else 24000
    rows = np.random.default_rng(SEED).permutation(len(x))[:n]  # windows from the whole training text
    test = 300 if quick else 2000
    return Task("transformer", lambda: build_transformer(len(vocab), SEQ_LEN), (x[rows], y[rows], xt[:test],
                                                                                yt[:test]),
                _bits_per_char, "bits_per_char", False, epochs=1 if quick else 4, finetune=0.5 if quick else 2.0,
                lr=1e-3, batch=64, cosine_finetune=True, bits=(2, 3, 4))


# --- arms -----------------------------------------------------------------------------------------------------

def _entry(task, model, seconds, **extra):
    from tfq_ext import diffq

    report = diffq.size_report(model)
    quantized = [t for t in report.tensors if t.method != "float32"]
    entry = {task.metric_name: task.evaluate(model), "bytes": report.bytes,
             "bits_per_weight": 8.0 * report.bytes / report.params, "seconds": round(seconds, 1)}
    if quantized:
        entry["quantized_params"] = sum(t.params for t in quantized)
    entry.update(extra)
    return entry


def _diffq_entry(task, model, t0, **extra):
    """The row of a trained DiffQ arm: metric and size, learned bits (mean, per layer) and the size estimate."""
    from tfq_ext import diffq

    per_layer = {name: float(np.mean(b)) for name, b in diffq.learned_bits(model).items()}
    return _entry(task, model, time.perf_counter() - t0, **extra, mean_bits=diffq.mean_bits(model),
                  layer_bits=per_layer, estimated_bytes=round(diffq.estimated_size(model), 1))


def run_task(task: Task, penalties, out_dir: Path) -> dict:
    from tfq_ext import diffq

    results = {}
    keras.utils.set_random_seed(SEED)
    start = time.perf_counter()
    log(f"{task.name}: float training, {task.epochs} epoch(s) on {len(task.x)} examples")
    checkpoint = task.fit(task.build(), task.epochs, finetune=False)
    initial_weights = checkpoint.get_weights()
    float_model = task.fit(checkpoint, task.finetune)
    results["float"] = _entry(task, float_model, time.perf_counter() - start)
    log(f"  float {task.metric_name} {results['float'][task.metric_name]:.4f}, {results['float']['bytes']} B")

    def from_checkpoint():
        model = task.build()
        model.set_weights(initial_weights)
        return model

    for bits in task.bits:
        t0 = time.perf_counter()
        results[f"ptq_{bits}"] = _entry(task, diffq.apply_uniform(float_model, bits, min_size=0.0),
                                        time.perf_counter() - t0, bits=bits)
        keras.utils.set_random_seed(SEED)
        t0 = time.perf_counter()
        qat = task.fit(diffq.apply_uniform(from_checkpoint(), bits, min_size=0.0), task.finetune)
        results[f"qat_{bits}"] = _entry(task, qat, time.perf_counter() - t0, bits=bits)
        log(f"  {bits}-bit: PTQ {results[f'ptq_{bits}'][task.metric_name]:.4f}, QAT "
            f"{results[f'qat_{bits}'][task.metric_name]:.4f}, {results[f'qat_{bits}']['bytes']} B")

    for penalty in penalties:
        keras.utils.set_random_seed(SEED)
        t0 = time.perf_counter()
        model = diffq.apply_diffq(from_checkpoint(), penalty=penalty, **DIFFQ)
        optimizer = diffq.DiffQOptimizer(task.optimizer(task.finetune), bits_learning_rate=BITS_LR)
        task.fit(model, task.finetune, optimizer=optimizer)
        key = f"diffq_p{penalty:g}"
        results[key] = _diffq_entry(task, model, t0, penalty=penalty)
        per_layer = results[key]["layer_bits"]
        results[key][f"{task.metric_name}_zero_grid"] = _with_grid(task, model, "zero")
        packed = diffq.export_packed(model)
        results[key]["packed_payload_bytes"] = packed.payload_bytes
        results[key]["packed_file_bytes"] = len(packed.to_bytes())
        log(f"  DiffQ penalty {penalty:g}: {task.metric_name} {results[key][task.metric_name]:.4f}, mean bits "
            f"{results[key]['mean_bits']:.2f}, {results[key]['bytes']} B, per layer "
            + ", ".join(f"{k.split('/')[0]}:{v:.2f}" for k, v in per_layer.items()))
        results[key]["_model"] = model
    return results


def run_bits_decay(task: Task, penalties) -> dict:
    """DiffQ arms whose bits rate decays on the weights' cosine (``diffqbd_p<p>``), from the same seeded checkpoint
    as :func:`run_task` (retrained: the checkpoint is not stored)."""
    from tfq_ext import diffq

    log(f"{task.name}: float checkpoint again, {task.epochs} epoch(s), for the decayed-bits-rate DiffQ arms")
    initial_weights = _checkpoint(task, SEED)
    steps = int(math.ceil(len(task.x) * task.finetune / task.batch))
    results = {}
    for penalty in penalties:
        keras.utils.set_random_seed(SEED)
        t0 = time.perf_counter()
        model = task.build()
        model.set_weights(initial_weights)
        model = diffq.apply_diffq(model, penalty=penalty, **DIFFQ)
        bits_rate = keras.optimizers.schedules.CosineDecay(BITS_LR, steps)
        task.fit(model, task.finetune,
                 optimizer=diffq.DiffQOptimizer(task.optimizer(task.finetune), bits_learning_rate=bits_rate))
        key = f"diffqbd_p{penalty:g}"
        results[key] = _diffq_entry(task, model, t0, penalty=penalty)
        log(f"  DiffQ (bits rate decayed) penalty {penalty:g}: {task.metric_name} {results[key][task.metric_name]:.4f}, "
            f"mean bits {results[key]['mean_bits']:.2f}, {results[key]['bytes']} B")
    return results


def _frozen_bits_arm(task: Task, initial_weights, penalty: float, share: float, seed: int = SEED):
    """One DiffQ-then-frozen-bits fine-tune from ``initial_weights``: (trained model, metric before freezing)."""
    from tfq_ext import diffq

    keras.utils.set_random_seed(seed)
    first, second = task.finetune * share, task.finetune * (1.0 - share)
    steps = int(math.ceil(len(task.x) * first / task.batch))
    model = task.build()
    model.set_weights(initial_weights)
    model = diffq.apply_diffq(model, penalty=penalty, **DIFFQ)
    bits_rate = keras.optimizers.schedules.CosineDecay(BITS_LR, steps)
    task.fit(model, first, optimizer=diffq.DiffQOptimizer(task.optimizer(first), bits_learning_rate=bits_rate))
    noisy = task.evaluate(model)
    diffq.freeze_bits(model)
    task.fit(model, second)
    return model, noisy


def _split_qat_arm(task: Task, initial_weights, bits: int, share: float, seed: int = SEED):
    """Uniform QAT on the frozen-bits arms' schedule (a cosine over ``share`` of the fine-tune, then a fresh one
    over the rest): the control that tells the learned bits from the restarted learning rate."""
    from tfq_ext import diffq

    keras.utils.set_random_seed(seed)
    model = task.build()
    model.set_weights(initial_weights)
    model = diffq.apply_uniform(model, bits, min_size=0.0)
    task.fit(model, task.finetune * share)
    task.fit(model, task.finetune * (1.0 - share))
    return model


def _checkpoint(task: Task, seed: int):
    """The float weights after ``task.epochs`` of training from ``seed`` (the fine-tunes' common start)."""
    keras.utils.set_random_seed(seed)
    return task.fit(task.build(), task.epochs, finetune=False).get_weights()


def run_frozen_bits(task: Task, penalties, share: float = 0.5) -> dict:
    """DiffQ then the true grid (``diffqfz_p<p>``): from the same seeded checkpoint as :func:`run_task`, DiffQ for
    ``share`` of the fine-tune (weights and bits rate on one cosine), then :func:`tfq_ext.diffq.freeze_bits` and
    the rest of the fine-tune on the true grid at the learned bits (straight-through, a fresh cosine from the task's
    rate). The whole fine-tune has the QAT arms' number of steps."""
    log(f"{task.name}: float checkpoint again, {task.epochs} epoch(s), for the DiffQ-then-frozen-bits arms")
    initial_weights = _checkpoint(task, SEED)
    results = {}
    for penalty in penalties:
        t0 = time.perf_counter()
        model, noisy = _frozen_bits_arm(task, initial_weights, penalty, share)
        key = f"diffqfz_p{penalty:g}"
        results[key] = _diffq_entry(task, model, t0, penalty=penalty, diffq_share=share,
                                    **{f"{task.metric_name}_before_freeze": noisy})
        log(f"  DiffQ {task.finetune * share:g} epoch(s) then frozen bits, penalty {penalty:g}: {task.metric_name} "
            f"{noisy:.4f} -> {results[key][task.metric_name]:.4f}, mean bits {results[key]['mean_bits']:.2f}, "
            f"{results[key]['bytes']} B")
    return results


def run_seeds(task: Task, seeds, penalties=(6.0, 8.0), bits=(3, 4), share: float = 0.5, known=None) -> dict:
    """Per seed (initial weights and data order; the data are the same): the float fine-tune, uniform QAT at
    ``bits`` (one cosine, as :func:`run_task`, and split as the frozen-bits arms), and ``diffqfz_p<p>``.
    ``known``: ``{seed: {arm: row}}`` already measured (not rerun)."""
    from tfq_ext import diffq

    out = {}
    for seed in seeds:
        rows = dict((known or {}).get(seed, {}))
        wanted = (["float"] + [f"qat_{b}" for b in bits] + [f"qatsplit_{b}" for b in bits]
                  + [f"diffqfz_p{p:g}" for p in penalties])
        if all(arm in rows for arm in wanted):
            out[seed] = rows
            continue
        log(f"{task.name}, seed {seed}: float checkpoint, {task.epochs} epoch(s)")
        initial = _checkpoint(task, seed)

        def fresh():
            model = task.build()
            model.set_weights(initial)
            return model

        def keep(arm, model, t0, **extra):
            rows[arm] = _entry(task, model, time.perf_counter() - t0, **extra)
            log(f"  seed {seed} {arm}: {task.metric_name} {rows[arm][task.metric_name]:.4f}, {rows[arm]['bytes']} B")

        if "float" not in rows:
            t0 = time.perf_counter()
            keras.utils.set_random_seed(seed)
            keep("float", task.fit(fresh(), task.finetune), t0)
        for b in bits:
            if f"qat_{b}" not in rows:
                t0 = time.perf_counter()
                keras.utils.set_random_seed(seed)
                keep(f"qat_{b}", task.fit(diffq.apply_uniform(fresh(), b, min_size=0.0), task.finetune), t0, bits=b)
            if f"qatsplit_{b}" not in rows:
                t0 = time.perf_counter()
                keep(f"qatsplit_{b}", _split_qat_arm(task, initial, b, share, seed), t0, bits=b)
        for p in penalties:
            if f"diffqfz_p{p:g}" not in rows:
                t0 = time.perf_counter()
                model, noisy = _frozen_bits_arm(task, initial, p, share, seed)
                keep(f"diffqfz_p{p:g}", model, t0, penalty=p, mean_bits=diffq.mean_bits(model),
                     **{f"{task.metric_name}_before_freeze": noisy})
        out[seed] = rows
    return out


def summarize_seeds(per_seed: dict, metric: str, higher_is_better: bool) -> dict:
    """Per DiffQ arm: over seeds, the gap to that seed's float and the lead over that seed's QAT (one cosine and
    split schedule, each interpolated to the arm's size) — paired differences."""
    arms = sorted({a for rows in per_seed.values() for a in rows if a.startswith("diffqfz_")})
    summary = {}
    for arm in arms:
        gaps, leads, leads_split, bits = [], [], [], []
        for rows in per_seed.values():
            if arm not in rows:
                continue
            sign = 1 if higher_is_better else -1
            gaps.append(sign * (rows["float"][metric] - rows[arm][metric]))
            for prefix, into in (("qat_", leads), ("qatsplit_", leads_split)):
                qat = {a: r for a, r in rows.items() if a.startswith(prefix)}
                vs = compare_with_qat({"float": rows["float"], **{a.replace(prefix, "qat_"): r for a, r in qat.items()},
                                       arm: rows[arm]}, metric, higher_is_better)
                into.append(vs[arm]["diffq_ahead_by"] if arm in vs else float("nan"))
            bits.append(rows[arm]["mean_bits"])
        summary[arm] = {"seeds": len(gaps), "mean_bits": bits, "gap_to_float": gaps, "ahead_of_qat": leads,
                        "ahead_of_split_qat": leads_split}
    return summary


def seeds(out_dir, seeds=(0, 1, 2), penalties=(6.0, 8.0), command: str = "") -> dict:
    """Adds paired per-seed runs of the frozen-bits recipe to the transformer task in ``diffq.json`` (seed 0 reuses
    the float, QAT and diffqfz arms already there): ``python -c "import benchmarks.diffq as b;
    b.seeds('benchmarks/results')"``."""
    out_dir = Path(out_dir)
    report = json.loads((out_dir / "diffq.json").read_text())
    task = transformer_task(False)
    entry = report["tasks"]["transformer"]
    reused = {"float", "qat_3", "qat_4"} | {f"diffqfz_p{p:g}" for p in penalties}
    known = {SEED: {a: r for a, r in entry["results"].items() if a in reused}}
    known.update({int(k): v for k, v in entry.get("seed_runs", {}).items()})
    start = time.perf_counter()
    per_seed = run_seeds(task, seeds, penalties, known=known)
    entry["seed_runs"] = {str(k): v for k, v in per_seed.items()}
    entry["seed_summary"] = summarize_seeds(per_seed, task.metric_name, task.higher_is_better)
    entry["seeds_seconds"] = round(time.perf_counter() - start, 1)
    report.setdefault("commands", {})["transformer_seeds"] = command
    (out_dir / "diffq.json").write_text(json.dumps(report, indent=2))
    (out_dir / "diffq.md").write_text(_table(report))
    print(_table(report), flush=True)
    return report


def run_from_scratch(task: Task, penalties) -> dict:
    """DiffQ trained from the seeded initial weights for the float arm's whole budget (``diffqfs_p<p>``:
    ``epochs + finetune`` epochs), weights and bits rate on one cosine over all steps: the paper's setting, where
    DiffQ is not a fine-tune of a float model."""
    from tfq_ext import diffq

    epochs = task.epochs + task.finetune
    steps = int(math.ceil(len(task.x) * epochs / task.batch))
    results = {}
    for penalty in penalties:
        keras.utils.set_random_seed(SEED)
        t0 = time.perf_counter()
        model = diffq.apply_diffq(task.build(), penalty=penalty, **DIFFQ)
        optimizer = diffq.DiffQOptimizer(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(task.lr, steps)),
                                         bits_learning_rate=keras.optimizers.schedules.CosineDecay(BITS_LR, steps))
        task.fit(model, epochs, optimizer=optimizer)
        key = f"diffqfs_p{penalty:g}"
        results[key] = _diffq_entry(task, model, t0, penalty=penalty, epochs=epochs)
        log(f"  DiffQ from scratch, penalty {penalty:g}: {task.metric_name} {results[key][task.metric_name]:.4f}, "
            f"mean bits {results[key]['mean_bits']:.2f}, {results[key]['bytes']} B")
    return results


def _with_grid(task, model, grid: str) -> float:
    """The metric of the same trained model with another true-quantization grid (inference only)."""
    from tfq_ext import diffq

    wrappers = diffq.diffq_layers(model)
    saved = [w.grid for w in wrappers]
    try:
        for wrapper in wrappers:
            wrapper.grid = grid
        model.predict_function = None  # the grid is read when the inference graph is traced
        return task.evaluate(model)
    finally:
        for wrapper, value in zip(wrappers, saved):
            wrapper.grid = value
        model.predict_function = None


def compare_with_qat(results: dict, metric: str, higher_is_better: bool) -> dict:
    """Each DiffQ arm against uniform QAT of the same true size (linear in size between the QAT arms around it)."""
    qat = sorted((r["bytes"], r[metric]) for a, r in results.items() if a.startswith("qat_"))
    rows = {}
    for arm, row in results.items():
        if (not arm.startswith(("diffq_", "diffqbd_", "diffqfs_", "diffqfz_"))
                or not qat[0][0] <= row["bytes"] <= qat[-1][0]):
            continue
        upper = next(i for i, (size, _) in enumerate(qat) if size >= row["bytes"])
        (s0, m0), (s1, m1) = qat[max(upper - 1, 0)], qat[upper]
        at_size = m1 if s1 == s0 else m0 + (m1 - m0) * (row["bytes"] - s0) / (s1 - s0)
        gain = row[metric] - at_size if higher_is_better else at_size - row[metric]
        rows[arm] = {"mean_bits": row["mean_bits"], "bytes": row["bytes"], "qat_at_same_size": at_size,
                     "diffq_ahead_by": gain,
                     "gap_to_float": (results["float"][metric] - row[metric]) * (1 if higher_is_better else -1)}
    return rows


def _int8_grid_check(flatbuffer: bytes, diffq_model) -> dict:
    """How far the int8 TFLite weights are from the DiffQ grid values they were converted from."""
    from ai_edge_litert.interpreter import Interpreter
    from tfq_ext import diffq

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    int8 = []
    for detail in interpreter.get_tensor_details():
        q = detail["quantization_parameters"]
        if detail["dtype"] == np.int8 and len(detail["shape"]) >= 2 and len(q["scales"]):
            try:
                values = interpreter.get_tensor(detail["index"]).astype(np.float64)
            except ValueError:
                continue
            shape = [1] * values.ndim
            if len(q["scales"]) > 1:
                shape[q["quantized_dimension"]] = -1
            scales = np.asarray(q["scales"]).reshape(shape)
            zero = np.asarray(q["zero_points"]).reshape(shape)
            int8.append((values - zero) * scales)
    rows = {}
    for wrapper in diffq.diffq_layers(diffq_model):
        for path, grid in wrapper.quantized_weights().items():
            grid = grid.numpy().astype(np.float64)
            # TFLite stores Dense kernels (out, in) and Conv kernels (out, kh, kw, in).
            layout = grid.T if grid.ndim == 2 else np.transpose(grid, (3, 0, 1, 2)) if grid.ndim == 4 else grid
            match = [w for w in int8 if w.shape == layout.shape]
            if not match:
                continue
            deq = min(match, key=lambda w: np.abs(w - layout).max())
            deq = deq.T if grid.ndim == 2 else np.transpose(deq, (1, 2, 3, 0)) if grid.ndim == 4 else deq
            weights = wrapper._variable(path).numpy()
            step = (weights.max() - weights.min()) / (2.0 ** wrapper.rounded_bits()[path] - 1)  # Delta per group
            error = np.abs(deq - grid).reshape(-1, wrapper.group_size) / step[:, None]
            rows[f"{wrapper.layer.name}/{path}"] = {
                "max_error_in_group_steps": float(error.max()), "mean_error_in_group_steps": float(error.mean()),
                "share_unchanged": float(np.mean(error <= 1e-5))}
    return rows


TASKS = ("fashion_mnist", "shakespeare", "transformer")


def _add_transformer_arms(out_dir, run, penalties, kind: str, command: str) -> dict:
    """Runs ``run(task, penalties)`` on the transformer task and merges its arms into ``diffq.json`` (time under
    ``<kind>_seconds``, command under ``transformer_<kind>``), then rewrites the table and the plot."""
    out_dir = Path(out_dir)
    report = json.loads((out_dir / "diffq.json").read_text())
    task = transformer_task(False)
    start = time.perf_counter()
    added = run(task, penalties)
    entry = report["tasks"]["transformer"]
    entry["results"].update(added)
    entry["diffq_vs_qat"] = compare_with_qat(entry["results"], task.metric_name, task.higher_is_better)
    entry[f"{kind}_seconds"] = round(time.perf_counter() - start, 1)
    report.setdefault("commands", {})[f"transformer_{kind}"] = command
    (out_dir / "diffq.json").write_text(json.dumps(report, indent=2))
    (out_dir / "diffq.md").write_text(_table(report))
    _plot(task.name, task.metric_name, entry["results"], out_dir / f"diffq_{task.name}.png")
    print(_table(report), flush=True)
    return report


def bits_decay(out_dir, penalties=(2.0, 4.0), command: str = "") -> dict:
    """Adds the decayed-bits-rate DiffQ arms to the transformer task in ``diffq.json`` (``python -c "import
    benchmarks.diffq as b; b.bits_decay('benchmarks/results')"``)."""
    return _add_transformer_arms(out_dir, run_bits_decay, penalties, "bits_decay", command)


def frozen_bits(out_dir, penalties=(4.0, 8.0), command: str = "") -> dict:
    """Adds the DiffQ-then-frozen-bits arms to the transformer task in ``diffq.json`` (``python -c "import
    benchmarks.diffq as b; b.frozen_bits('benchmarks/results')"``)."""
    return _add_transformer_arms(out_dir, run_frozen_bits, penalties, "frozen_bits", command)


def from_scratch(out_dir, penalties=(2.0, 4.0), command: str = "") -> dict:
    """Adds the from-scratch DiffQ arms to the transformer task in ``diffq.json`` (``python -c "import
    benchmarks.diffq as b; b.from_scratch('benchmarks/results')"``)."""
    return _add_transformer_arms(out_dir, run_from_scratch, penalties, "from_scratch", command)


def main(out_dir, quick: bool = False, command: str = "", tasks=TASKS) -> dict:
    """Runs ``tasks`` (default all three); with a subset, the other tasks' results already in ``diffq.json``
    are kept (``python -c "import benchmarks.diffq as b; b.main('benchmarks/results', tasks=['transformer'])"``).
    """
    import tflite_export
    from tfq_ext import diffq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = {"benchmark": "diffq", "quick": quick, "command": command,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "tensorflow": tf.__version__},
              "setup": {"diffq": DIFFQ, "bits_learning_rate": BITS_LR, "uniform_bits": BITS,
                        "uniform": "per-tensor [min, max] nudged to contain 0, straight-through gradient"},
              "tasks": {}}
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"`tasks` must be among {TASKS}. Received: {list(tasks)}")
    name = "diffq_quick" if quick else "diffq"
    previous = out_dir / f"{name}.json"
    if set(tasks) != set(TASKS) and previous.exists():
        old = json.loads(previous.read_text())
        report["tasks"] = {k: v for k, v in old["tasks"].items() if k not in tasks}
        report["commands"] = {k: old.get("commands", {}).get(k, old["command"]) for k in report["tasks"]}
    makers = {"fashion_mnist": (fashion_task, (1.0, 4.0, 32.0), (8.0,)),
              "shakespeare": (shakespeare_task, (4.0, 16.0, 64.0), (16.0,)),
              "transformer": (transformer_task, (2.0, 4.0, 8.0), (16.0,))}
    for key in tasks:
        maker, full, short = makers[key]
        task, penalties = maker(quick), (short if quick else full)
        task_start = time.perf_counter()
        results = run_task(task, penalties, out_dir)
        models = {k: v.pop("_model") for k, v in results.items() if "_model" in v}
        chosen = min(models, key=lambda k: abs(results[k]["mean_bits"] - 3.0))
        diffq.plot_bits(diffq.learned_bits(models[chosen]), out_dir / f"diffq_bits_{task.name}.png",
                        title=f"DiffQ learned bits, {task.name}, {chosen}")
        if task.name == "fashion_mnist":
            flatbuffer = diffq.export_tflite(models[chosen], task.x[:200], per_channel=True)
            results[chosen]["tflite_int8_bytes"] = len(flatbuffer)
            results[chosen]["tflite_int8_accuracy"] = float(
                np.mean(np.argmax(tflite_export.run(flatbuffer, task.xt), 1) == task.yt))
            results[chosen]["tflite_int8_grid"] = _int8_grid_check(flatbuffer, models[chosen])
        report["tasks"][task.name] = {"metric": task.metric_name, "train_examples": len(task.x),
                                      "test_examples": len(task.xt), "epochs": task.epochs,
                                      "finetune_epochs": task.finetune, "results": results,
                                      "diffq_vs_qat": compare_with_qat(results, task.metric_name,
                                                                       task.higher_is_better),
                                      "seconds": round(time.perf_counter() - task_start, 1)}
        report.setdefault("commands", {})[task.name] = command
        _plot(task.name, task.metric_name, results, out_dir / f"diffq_{task.name}.png")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["tasks"] = {k: report["tasks"][k] for k in TASKS if k in report["tasks"]}
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{name}.md").write_text(_table(report))
    print(_table(report), flush=True)
    return report


def _table(report) -> str:
    lines = []
    for name, task in report["tasks"].items():
        metric = task["metric"]
        lines += [f"### {name} ({metric}; {task['train_examples']} training / {task['test_examples']} test examples)",
                  "", f"| arm | {metric} | true size (B) | bits / weight (all) | bits of quantized weights | "
                  f"{metric}, zero-exact grid | per-layer mean bits |", "|---|---:|---:|---:|---:|---:|---|"]
        for arm, row in task["results"].items():
            layers = ", ".join(f"{k.split('/')[0]}/{k.split('/')[-1].split('.')[-1]} {v:.2f}"
                               for k, v in row.get("layer_bits", {}).items())
            mean = f"{row['mean_bits']:.2f}" if "mean_bits" in row else (str(row["bits"]) if "bits" in row else "32")
            ranged = row.get(f"{metric}_zero_grid")
            lines.append(f"| {arm} | {row[metric]:.4f} | {row['bytes']} | {row['bits_per_weight']:.2f} | {mean} | "
                         f"{'-' if ranged is None else f'{ranged:.4f}'} | {layers} |")
        if task.get("diffq_vs_qat"):
            lines += ["", "| DiffQ arm | mean bits | true size (B) | uniform QAT at that size (interpolated) | "
                      "DiffQ ahead by | gap to float (+ = worse) |", "|---|---:|---:|---:|---:|---:|"]
            for arm, c in task["diffq_vs_qat"].items():
                lines.append(f"| {arm} | {c['mean_bits']:.2f} | {c['bytes']} | {c['qat_at_same_size']:.4f} | "
                             f"{c['diffq_ahead_by']:+.4f} | {c['gap_to_float']:+.4f} |")
        for arm, row in task["results"].items():
            if "tflite_int8_accuracy" in row:
                grid = row["tflite_int8_grid"]
                worst = max(g["max_error_in_group_steps"] for g in grid.values())
                kept = np.mean([g["share_unchanged"] for g in grid.values()])
                lines.append(f"\n{arm} as full-int8 TFLite (per-channel): {row['tflite_int8_bytes']} bytes, accuracy "
                             f"{row['tflite_int8_accuracy']:.4f} (Keras {row[metric]:.4f}). Int8 re-quantization moves "
                             f"weights off the DiffQ grid by at most {worst:.3f} of their group's step (mean share "
                             f"of weights kept exactly: {kept:.2f}).")
        if "seconds" in task:
            lines.append(f"\n{name}: {task['seconds']:.0f} s. Command: `{report['commands'][name]}`")
        elif name in report.get("commands", {}):
            lines.append(f"\n{name}: command `{report['commands'][name]}`")
        if f"{name}_bits_decay" in report.get("commands", {}):
            lines.append(f"diffqbd_* arms: {task.get('bits_decay_seconds', 0):.0f} s. Command: "
                         f"`{report['commands'][name + '_bits_decay']}`")
        if f"{name}_frozen_bits" in report.get("commands", {}):
            lines.append(f"diffqfz_* arms (DiffQ for half the fine-tune, then frozen bits on the true grid): "
                         f"{task.get('frozen_bits_seconds', 0):.0f} s. Command: "
                         f"`{report['commands'][name + '_frozen_bits']}`")
        if task.get("seed_summary"):
            lines += ["", "Paired over seeds (each seed: its own float checkpoint, float fine-tune, QAT and DiffQ arms; "
                      "+ = DiffQ better / worse than float):", "",
                      "| arm | seeds | mean bits | gap to float, per seed | ahead of QAT (one cosine), per seed | "
                      "ahead of QAT (split schedule), per seed |", "|---|---:|---|---|---|---|"]

            def cells(values):
                return (", ".join(f"{v:+.4f}" for v in values)
                        + f" (mean {np.nanmean(values):+.4f})") if values else "-"

            for arm, row in task["seed_summary"].items():
                lines.append(f"| {arm} | {row['seeds']} | {', '.join(f'{b:.2f}' for b in row['mean_bits'])} | "
                             f"{cells(row['gap_to_float'])} | {cells(row['ahead_of_qat'])} | "
                             f"{cells(row['ahead_of_split_qat'])} |")
            lines.append(f"Seed runs: {task.get('seeds_seconds', 0):.0f} s. Command: "
                         f"`{report['commands'].get(name + '_seeds', '')}`")
        if f"{name}_from_scratch" in report.get("commands", {}):
            lines.append(f"diffqfs_* arms (DiffQ from scratch, the float arm's whole budget): "
                         f"{task.get('from_scratch_seconds', 0):.0f} s. Command: "
                         f"`{report['commands'][name + '_from_scratch']}`")
        lines.append("")
    lines.append(f"Time of the last run {report['seconds']:.0f} s. Command: `{report['command']}`")
    return "\n".join(lines) + "\n"


def _plot(name: str, metric: str, results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    scale = 100.0 if metric == "accuracy" else 1.0
    styles = {"ptq": ("tab:gray", "v", "PTQ (uniform)"), "qat": ("tab:blue", "o", "QAT (uniform, STE)"),
              "diffq": ("tab:red", "s", "DiffQ"),
              "diffqbd": ("tab:purple", "D", "DiffQ, bits rate decayed with the weights'"),
              "diffqfs": ("tab:brown", "^", "DiffQ from scratch (whole budget)"),
              "diffqfz": ("tab:green", "P", "DiffQ, then frozen bits on the true grid")}
    # The axis follows float, QAT and DiffQ; PTQ points far outside are listed instead of flattening the plot.
    core = [scale * r[metric] for a, r in results.items() if not a.startswith("ptq_")]
    pad = 0.15 * (max(core) - min(core)) + (0.2 if metric == "accuracy" else 0.01)
    low, high = min(core) - pad, max(core) + pad
    off_scale = []
    for prefix, (color, marker, label) in styles.items():
        rows = sorted(((r["bytes"], r[metric], a) for a, r in results.items() if a.startswith(prefix + "_")))
        if rows:
            ax.plot([r[0] / 1024 for r in rows], [min(max(scale * r[1], low), high) for r in rows], marker=marker,
                    color=color, label=label)
            for size, value, arm in rows:
                if not low <= scale * value <= high:
                    off_scale.append(f"{arm}: {scale * value:.{2 if scale > 1 else 3}f}")
                ax.annotate(arm.split("_", 1)[1], (size / 1024, min(max(scale * value, low), high)), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    ax.axhline(scale * results["float"][metric], color="k", ls="--", lw=1,
               label=f"float32 ({results['float']['bytes'] / 1024:.0f} KiB)")
    ax.set_ylim(low, high)
    if off_scale:
        ax.text(0.01, 0.01, "off scale (drawn at the edge): " + ", ".join(off_scale), transform=ax.transAxes,
                fontsize=7, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("true size (KiB, log scale; packed codes + ranges + bits fields, float32 rest)")
    ax.set_ylabel("test accuracy (%)" if metric == "accuracy" else "test bits per character (lower is better)")
    ax.set_title(f"DiffQ vs uniform QAT / PTQ: {name}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if metric == "accuracy" else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(out_dir) -> None:
    """Redraws the accuracy-vs-size plots from ``diffq.json`` (no training)."""
    report = json.loads((Path(out_dir) / "diffq.json").read_text())
    for name, task in report["tasks"].items():
        _plot(name, task["metric"], task["results"], Path(out_dir) / f"diffq_{name}.png")
