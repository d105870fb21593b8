"""One call from a trained model to the size/accuracy frontier across every method: ``compress_model``.

Each candidate (post-training int8, int8 QAT, DiffQ at a few size penalties, Quant-Noise + iPQ at a few block
sizes, KQ on the convolutions, KQ on the convolutions with iPQ on the dense layers) is trained from the user's
model on the user's data and ends as a real full-int8 ``.tflite`` file, stripped of the names and metadata no
runtime reads (``tflite_export.strip``) and compressed where that is smaller. Its
accuracy (or the user's metric) is measured by running that file in ai-edge-litert on the validation data
(a compressed file after ``tflite_export.decompress``, which is what ``tfq_decompress`` gives on a phone), its
size is the file's size and its latency is measured on XNNPACK, interleaved with the float32 file's.

    report = compress_model(model, (x_train, y_train), (x_val, y_val), max_accuracy_drop=1.0, out_dir="out")
    print(report)                     # the table; report.frontier, report.recommended, report.candidates

Files written to ``out_dir``: ``<candidate>.tflite``, ``float32.tflite``, ``recommended.tflite``,
``report.json``, ``report.md`` and ``frontier.png``.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfq_ext._keras import ensure_tf_keras_model, keras, tf

__all__ = ["METHODS", "Candidate", "CompressionResult", "compress_model", "check_classification_data"]

# Method name -> what it is; the order is the cheapest-first order in which candidates run.
METHODS: Dict[str, str] = {
    "ptq_int8": "post-training full-int8 (calibrated on training images)",
    "qat_int8": "integer-only QAT (Jacob et al.), per-channel int8",
    "kq": "KQ: kernel codebooks on the convolutions (BatchNorm folded), per-tensor int8, compressed file",
    "diffq": "DiffQ: learned bits per group of 8 weights at a size penalty, then the weights trained on the frozen "
             "grid; compressed file",
    "ipq": "Quant-Noise fine-tune + iPQ (K=256), per-tensor int8, compressed file",
    "kq+ipq": "KQ on the k x k convolutions + iPQ on the 1x1 convs and dense layers, compressed file",
    "tfmot_qat": "reference: tfmot QAT + TFLite converter int8 (not recommended, shown for comparison)",
}
REFERENCE_METHODS = ("tfmot_qat",)
_FILE_NAMES_RESERVED = ("float32", "recommended")


def _log(message: str, verbose: int) -> None:
    if verbose:
        print(f"[tfq-ext compress] {message}", flush=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Candidate:
    """One candidate file: where it is, its size, its metric from the file and its XNNPACK latency."""

    name: str
    method: str
    description: str
    file: Optional[str] = None          # relative to the output folder
    bytes: Optional[int] = None
    accuracy: Optional[float] = None    # the metric, measured by running the file
    latency_ms: Optional[float] = None  # XNNPACK, 1 thread, one batch-1 invoke, median of interleaved rounds
    partitions: Optional[int] = None    # XNNPACK partitions of the (loaded) file
    nodes_outside: Optional[int] = None
    integer_only: Optional[bool] = None
    compressed: bool = False
    loaded_bytes: Optional[int] = None  # size once loaded (the dense int8 model), for a compressed file
    seconds: Optional[float] = None     # training + export wall time
    status: str = "ok"                  # ok | failed | skipped
    error: Optional[str] = None
    reference: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class CompressionResult:
    """What :func:`compress_model` measured; ``str(result)`` is the table."""

    float: Dict[str, Any]
    candidates: List[Candidate]
    frontier: List[str]
    recommended: Optional[str]
    recommendation: str
    metric: str
    max_accuracy_drop: Optional[float]
    target_bytes: Optional[int]
    out_dir: Optional[str] = None
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    settings: Dict[str, Any] = field(default_factory=dict)

    def candidate(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(f"no candidate named {name!r}; candidates: {[c.name for c in self.candidates]}")

    def to_dict(self) -> Dict[str, Any]:
        return {
            "float": dict(self.float),
            "candidates": [asdict(c) for c in self.candidates],
            "frontier": list(self.frontier),
            "recommended": self.recommended,
            "recommendation": self.recommendation,
            "metric": self.metric,
            "max_accuracy_drop": self.max_accuracy_drop,
            "target_bytes": self.target_bytes,
            "seconds": round(self.seconds, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "settings": self.settings,
        }

    def to_markdown(self) -> str:
        f = self.float
        lines = [f"| candidate | method | {self.metric} | bytes | x smaller than fp32 | latency ms | partitions | "
                 "frontier |", "|---|---|---:|---:|---:|---:|---:|---|"]
        lines.append(f"| float32 | fp32 .tflite | {_fmt(f.get('accuracy'))} | {f.get('bytes')} | 1.0 | "
                     f"{_fmt(f.get('latency_ms'))} | {_fmt(f.get('partitions'))} | reference |")
        for c in self.candidates:
            if not c.ok:
                lines.append(f"| {c.name} | {c.method} | {c.status}: {(c.error or '')[:100]} | | | | | |")
                continue
            mark = "**recommended**" if c.name == self.recommended else (
                "yes" if c.name in self.frontier else ("reference" if c.reference else ""))
            ratio = f"{f['bytes'] / c.bytes:.1f}" if f.get("bytes") and c.bytes else "-"
            lines.append(f"| {c.name} | {c.method} | {_fmt(c.accuracy)} | {c.bytes} | {ratio} | "
                         f"{_fmt(c.latency_ms)} | {_fmt(c.partitions)} | {mark} |")
        lines.append("")
        lines.append(f"Recommendation: {self.recommendation}")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def plot(self, path) -> None:
        """Frontier PNG: file size (log axis) vs the metric, one marker per method, float32 and references."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        markers = dict(zip(METHODS, "os^Dvp*"))
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        by_method: Dict[str, List[Candidate]] = {}
        for c in self.candidates:
            if c.ok and c.bytes and c.accuracy is not None:
                by_method.setdefault(c.method, []).append(c)
        for method, items in by_method.items():
            ax.scatter([c.bytes for c in items], [c.accuracy for c in items], marker=markers.get(method, "o"),
                       s=60, label=method, facecolors="none" if method in REFERENCE_METHODS else None,
                       edgecolors="black" if method in REFERENCE_METHODS else None, zorder=3)
            for c in items:
                ax.annotate(c.name, (c.bytes, c.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = [self.candidate(n) for n in self.frontier]
        if front:
            ax.plot([c.bytes for c in front], [c.accuracy for c in front], "-", color="gray", lw=1, zorder=2,
                    label="frontier")
        if self.float.get("bytes") and self.float.get("accuracy") is not None:
            ax.scatter([self.float["bytes"]], [self.float["accuracy"]], marker="X", s=90, color="black",
                       label="float32 .tflite", zorder=4)
            if self.max_accuracy_drop is not None:
                ax.axhline(self.float["accuracy"] - self.max_accuracy_drop / 100.0, color="red", lw=0.8, ls="--",
                           label=f"float - {self.max_accuracy_drop:g} point{'' if self.max_accuracy_drop == 1 else 's'}")
        if self.target_bytes:
            ax.axvline(self.target_bytes, color="purple", lw=0.8, ls=":", label="target bytes")
        if self.recommended:
            c = self.candidate(self.recommended)
            ax.scatter([c.bytes], [c.accuracy], s=260, facecolors="none", edgecolors="red", lw=1.5, zorder=5,
                       label="recommended")
        ax.set_xscale("log")
        ax.set_xlabel(".tflite file size (bytes, log scale)")
        ax.set_ylabel(f"{self.metric} (from the file, validation data)")
        ax.set_title("tfq_ext compress: size / accuracy frontier")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# ----------------------------------------------------------------------------------------------- input checks
def _as_xy(value, arg_name: str) -> Tuple[np.ndarray, np.ndarray]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"`{arg_name}` must be a tuple (x, y) of arrays. Received: {arg_name} of type "
                        f"{type(value).__name__}" + (f" with {len(value)} items" if isinstance(value, (tuple, list))
                                                     else ""))
    x, y = value
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`{arg_name}` x must be a numeric array. Received: {type(x).__name__} ({exc})") from None
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"`{arg_name}` x and y must be batches (at least one axis). Received: x shape {x.shape}, "
                         f"y shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"`{arg_name}` x and y must have the same number of examples. Received: {len(x)} x and "
                         f"{len(y)} y")
    if len(x) == 0:
        raise ValueError(f"`{arg_name}` is empty. Received: x shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{arg_name}` x has NaN or infinite values.")
    return x, y


def _input_shape(model) -> Tuple:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"`model` must have one input and one output (compress_model measures single-input, "
                         f"single-output files). Received: {len(model.inputs)} inputs, {len(model.outputs)} outputs")
    return tuple(model.inputs[0].shape[1:])


def _check_x(x: np.ndarray, shape: Tuple, arg_name: str) -> None:
    if x.ndim != len(shape) + 1 or any(s is not None and int(s) != d for s, d in zip(shape, x.shape[1:])):
        raise ValueError(f"`{arg_name}` x has shape {x.shape}, which does not match the model's input "
                         f"(batch, {', '.join('None' if s is None else str(s) for s in shape)})")


def check_classification_data(model, train, validation) -> Tuple[Tuple[np.ndarray, np.ndarray], ...]:
    """Validates (x, y) pairs against ``model`` for integer-label classification (the default loss and metric).

    Returns:
        ``((x_train, y_train), (x_val, y_val))`` as numpy arrays (x float32, y int64).
    """
    shape = _input_shape(model)
    classes = int(model.outputs[0].shape[-1])
    out = []
    for value, arg_name in ((train, "train"), (validation, "validation")):
        x, y = _as_xy(value, arg_name)
        _check_x(x, shape, arg_name)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"`{arg_name}` y must hold integer class labels, one per example (pass `loss` and "
                             f"`metric` for other targets). Received: y shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            if not np.issubdtype(y.dtype, np.floating) or not np.all(np.equal(np.mod(y, 1), 0)):
                raise ValueError(f"`{arg_name}` y must hold integer class labels. Received: dtype {y.dtype}")
        y = y.astype(np.int64)
        bad = (y < 0) | (y >= classes)
        if bad.any():
            raise ValueError(f"`{arg_name}` y has labels outside [0, {classes}) (the model has {classes} outputs). "
                             f"Received: {int(bad.sum())} out of range, e.g. {int(y[bad][0])}")
        out.append((x, y))
    return tuple(out)


def _outputs_probabilities(model) -> bool:
    """True when the model ends in a softmax (probabilities), False for logits."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    return name == "softmax" or type(last).__name__ == "Softmax"


def _default_loss(model):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not _outputs_probabilities(model))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Top-1 accuracy of integer labels against scores."""
    return float(np.mean(np.argmax(y_pred, axis=-1) == np.asarray(y_true).reshape(-1)))


def _check_positive(value, arg_name: str, kind=float, allow_none: bool = True):
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if kind is int:
        ok = ok and float(value) == int(value)
    if not ok:
        raise ValueError(f"`{arg_name}` must be a positive {'integer' if kind is int else 'number'}"
                         f"{' or None' if allow_none else ''}. Received: {arg_name}={value!r}")
    return kind(value)


def _check_methods(methods) -> List[str]:
    if methods is None:
        return [m for m in METHODS if m not in REFERENCE_METHODS]
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"`methods` must name methods from {list(METHODS)}. Received: methods={methods!r}")
    return [m for m in METHODS if m in methods]  # cheapest first


# ----------------------------------------------------------------------------------------------- candidates
@dataclass
class _Context:
    model: Any                   # the user's model (tf_keras; never modified)
    folded: Any                  # the same with BatchNorms folded into their kernels (for the codebook methods)
    x: np.ndarray
    y: np.ndarray
    loss: Any
    labels: np.ndarray           # ctx.y without the teacher's targets (ctx.y itself when not distilling)
    label_loss: Any              # the loss on the labels alone (the tfmot reference trains with it)
    epochs: float
    batch_size: int
    learning_rate: float
    calibration: np.ndarray
    fit_verbose: int
    verbose: int
    seed: int

    def adam(self, epochs: Optional[float] = None, scale: float = 1.0):
        """Adam whose rate decays from ``learning_rate * scale`` to 0 over ``epochs`` (default: the fine-tune's),
        so that every candidate ends on settled weights rather than one noisy step's."""
        return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(self.learning_rate * scale,
                                                                            self.steps(epochs)))

    def steps(self, epochs: Optional[float] = None) -> int:
        """Training steps of ``epochs`` epochs (default: the fine-tune's), at least 1."""
        return max(1, int(math.ceil((self.epochs if epochs is None else epochs) * len(self.x) / self.batch_size)))

    def fit(self, model, optimizer=None, callbacks=(), epochs: Optional[float] = None, distill: bool = True):
        """Fits ``model`` for ``epochs`` epochs (default: the fine-tune's); ``distill=False`` trains on the
        labels alone even when the candidates distill."""
        from tfq_ext._training import fit_epochs

        model.compile(optimizer or self.adam(epochs), self.loss if distill else self.label_loss)
        # x was shuffled once with the seed: a fractional epoch trains on its first rows.
        fit_epochs(model, self.x, self.y if distill else self.labels, self.epochs if epochs is None else epochs,
                   self.batch_size, verbose=self.fit_verbose, callbacks=callbacks)
        return model


def _ptq(ctx: _Context, _setting) -> bytes:
    import tflite_export

    return tflite_export.convert(ctx.model, representative_data=ctx.calibration, strip=True)


def _qat(ctx: _Context, _setting) -> bytes:
    import tflite_export
    from tfq_ext.qat import quantize_model

    qat = ctx.fit(quantize_model(ctx.model))
    return tflite_export.convert(qat, strip=True)


def _kq_budget(model, bits: float) -> float:
    """KQ's everything-counted budget (``bits_per_weight`` of ``quantize_kernels``: the convs it leaves, such as
    1x1 convs, count at 8 bits) that gives ``bits`` per weight to the k x k convolutions KQ quantizes."""
    from tfq_ext import kq

    chosen = kq.choose_codewords(model, 32.0)
    layers = kq.conv_bits(model)["layers"]
    eligible = [name for name, k in chosen.items() if k is not None]
    if not eligible:
        raise ValueError("no convolution KQ can quantize (k x k kernels, at least 128 of them per layer)")
    kept = sum(layers[name]["bits"] for name, k in chosen.items() if k is None)
    quantized = sum(layers[name]["weights"] for name in eligible)
    return (bits * quantized + kept) / sum(layers[name]["weights"] for name in chosen)


def _kq_model(ctx: _Context, bits: float):
    from tfq_ext import kq

    model, _ = kq.quantize_kernels(ctx.folded, ctx.x, ctx.y, bits_per_weight=_kq_budget(ctx.folded, bits),
                                   finetune_epochs=ctx.epochs, batch_size=ctx.batch_size,
                                   optimizer=ctx.adam(), loss=ctx.loss, metrics=(), seed=ctx.seed,
                                   verbose=ctx.verbose)
    return model


def _kq(ctx: _Context, bits) -> bytes:
    from tfq_ext import kq

    return kq.export_tflite(_kq_model(ctx, bits), ctx.calibration, compressed=True, strip=True)


# Knowledge distillation of the candidates' fine-tunes (``distill``): weight of the labels' cross-entropy and
# the temperature of the float model's and the candidate's softened predictions.
_DISTILL_ALPHA = 0.5
_DISTILL_T = 2.0

# Share of a DiffQ candidate's fine-tune that learns the bits; the rest trains the weights with the bits frozen.
_DIFFQ_LEARN_SHARE = 0.75


def _diffq(ctx: _Context, relative_penalty) -> bytes:
    from tfq_ext import diffq

    # The penalty is per float32 megabyte; scaling it by the model's size makes one setting mean the same
    # trade-off (penalty x size = relative_penalty at the start) for a small and a large model.
    megabytes = sum(int(np.prod(w.shape)) for w in ctx.folded.trainable_weights) * 4 / 2 ** 20
    model = diffq.apply_diffq(ctx.folded, group_size=8, penalty=relative_penalty / max(megabytes, 1e-6),
                              min_size=0, max_bits=8, init_bits=6)
    # Two phases in the fine-tune's budget: the noise learns the bits, then the bits are frozen and the weights
    # train on the true grid the file holds (the noise is not the rounding met at inference).
    learn = ctx.epochs * _DIFFQ_LEARN_SHARE
    # The bits start at 6 and move about one bits learning rate per step (Adam): a short fine-tune gets a larger
    # rate, so that the bits can reach 2 within the steps it has.
    bits_lr = min(0.5, max(3e-2, 8.0 / ctx.steps(learn)))
    ctx.fit(model, diffq.DiffQOptimizer(ctx.adam(learn), bits_learning_rate=bits_lr), epochs=learn)
    if learn < ctx.epochs:
        diffq.freeze_bits(model)
        ctx.fit(model, ctx.adam(ctx.epochs - learn, scale=0.5), epochs=ctx.epochs - learn)
    return diffq.export_tflite(model, ctx.calibration, compressed=True, strip=True)


# Layers with fewer blocks than this stay int8 (KQ's ``min_kernels`` default): K would be clamped to a quarter
# of their blocks, and their share of the file is small.
_MIN_BLOCKS = 128
_MAX_STAGES = 4


def _ipq_layers(model, block: int) -> List[Tuple[str, int, int]]:
    """(name, block length, number of blocks) of every Dense/Conv2D/Embedding layer at iPQ block size ``block``
    (a k x k conv's block is one kernel)."""
    from tfq_ext.quant_noise.ipq import _kernel, _kind

    rows = []
    for layer in model.layers:
        if _kind(layer) is None:
            continue
        shape = [int(s) for s in _kernel(layer).shape]
        if len(shape) == 4 and shape[0] * shape[1] > 1:
            rows.append((layer.name, shape[0] * shape[1], shape[2] * shape[3]))
        else:
            rows.append((layer.name, block, int(np.prod(shape)) // block))
    return rows


def _small_layers(model, block: int) -> List[str]:
    """Names of the layers with fewer than ``_MIN_BLOCKS`` iPQ blocks of size ``block``."""
    return [name for name, _, blocks in _ipq_layers(model, block) if blocks < _MIN_BLOCKS]


def _ipq_plan(model, block: int, exclude=()) -> Tuple[Tuple[str, int], ...]:
    """(layer, block length) of every layer iPQ quantizes at ``block``."""
    return tuple((name, length) for name, length, blocks in _ipq_layers(model, block)
                 if blocks >= _MIN_BLOCKS and name not in exclude)


def _ipq_model(ctx: _Context, model, block: int, exclude=()):
    from tfq_ext.quant_noise import QuantNoiseCentroidRefresh, add_quant_noise, quantize_pq

    sizes = {"dense": block, "conv": block, "embedding": block}
    exclude = sorted(set(exclude) | set(_small_layers(model, block)))
    eligible = [name for name, _ in _ipq_plan(model, block, exclude)]
    if not eligible:
        raise ValueError(f"no layer has {_MIN_BLOCKS} or more blocks of {block} weights for iPQ")
    # At most _MAX_STAGES stages, contiguous in model order (the paper's iPQ goes layer by layer; on a deep
    # network one fine-tune per layer would cost more than every other candidate together).
    count = min(_MAX_STAGES, len(eligible))
    stages = [list(chunk) for chunk in np.array_split(np.array(eligible, dtype=object), count)]
    noisy = add_quant_noise(model, noise_rate=0.1, noise="pq", block_sizes=sizes, exclude=exclude)
    steps = max(1, int(math.ceil(len(ctx.x) / ctx.batch_size)))
    ctx.fit(noisy, callbacks=[QuantNoiseCentroidRefresh(every_n_batches=max(1, min(100, steps)))])
    stage_epochs = max(0.25, ctx.epochs / 4)
    pq, _ = quantize_pq(noisy, ctx.x, ctx.y, n_centroids=256, block_sizes=sizes, stages=stages,
                        finetune_epochs=stage_epochs, batch_size=ctx.batch_size,
                        optimizer=lambda: ctx.adam(stage_epochs, scale=0.2), loss=ctx.loss, metrics=(),
                        exclude=exclude, seed=ctx.seed, verbose=ctx.verbose)
    return pq


def _ipq(ctx: _Context, block) -> bytes:
    import tflite_export
    from tfq_ext.quant_noise import to_dense_model

    pq = _ipq_model(ctx, ctx.folded, block)
    dense = tflite_export.convert(to_dense_model(pq), representative_data=ctx.calibration, per_channel=False,
                                  strip=True)
    return tflite_export.compress(dense)


def _kq_ipq(ctx: _Context, setting) -> bytes:
    from tfq_ext import kq
    from tfq_ext.quant_noise import to_dense_model

    bits, block = setting
    # iPQ on what KQ left: 1x1 convs and dense layers (k x k convs too small for KQ stay int8).
    pq = _ipq_model(ctx, _kq_model(ctx, bits), block)
    return kq.export_tflite(to_dense_model(pq), ctx.calibration, compressed=True, strip=True)


def _tfmot_qat(ctx: _Context, _setting) -> bytes:
    import tensorflow_model_optimization as tfmot

    # The reference is tfmot as its users run it: the labels' loss, no distillation.
    qat = ctx.fit(tfmot.quantization.keras.quantize_model(ctx.model), distill=False)
    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


# method -> [(candidate name, setting, description suffix)], and its builder
_SETTINGS = {
    "ptq_int8": [("ptq_int8", None, "")],
    "qat_int8": [("qat_int8", None, "")],
    "kq": [("kq_1.7b", 1.7, " at 1.7 bits per weight of the k x k convs it quantizes"),
           ("kq_1.0b", 1.0, " at 1.0 bit per weight of the k x k convs it quantizes"),
           ("kq_0.6b", 0.6, " at 0.6 bit per weight of the k x k convs it quantizes")],
    "diffq": [(f"diffq_p{p:g}", p, f" (relative penalty {p:g})") for p in (0.3, 3.0, 30.0, 100.0)],
    "ipq": [("ipq_b4", 4, " (blocks of 4; k x k convs: one kernel)"),
            ("ipq_b8", 8, " (blocks of 8; k x k convs: one kernel)"),
            ("ipq_b16", 16, " (blocks of 16; k x k convs: one kernel)")],
    "kq+ipq": [("kq+ipq", (1.7, 4), " (KQ 1.7 bits, iPQ blocks of 4)")],
    "tfmot_qat": [("tfmot_qat", None, "")],
}
# method -> plan(ctx, setting): what the setting does to this model; a setting whose plan equals an earlier
# setting's would train the same candidate again and is skipped (e.g. iPQ block sizes on a model whose layers
# are all k x k convs, whose blocks are kernels whatever the setting).
_PLANS: Dict[str, Callable] = {"ipq": lambda ctx, block: _ipq_plan(ctx.folded, block)}
_BUILDERS: Dict[str, Callable] = {"ptq_int8": _ptq, "qat_int8": _qat, "kq": _kq, "diffq": _diffq, "ipq": _ipq,
                                  "kq+ipq": _kq_ipq, "tfmot_qat": _tfmot_qat}


def _smallest_form(content: bytes) -> bytes:
    """The file as it is, or compressed (lossless, loader layout) where that is smaller."""
    import tflite_export

    if tflite_export.is_compressed(content):
        return content
    try:
        smaller = tflite_export.compress(content)
    except ValueError:  # nothing the codebook formats can take
        return content
    return smaller if len(smaller) < len(content) else content


def _file_name(name: str) -> str:
    return name.replace("+", "_") + ".tflite"


# ----------------------------------------------------------------------------------------------- measuring
def _measure_file(content: bytes, x_val, y_val, metric) -> Dict[str, Any]:
    import tflite_export

    loaded = tflite_export.decompress(content) if tflite_export.is_compressed(content) else content
    report = tflite_export.verify(loaded)
    predictions = tflite_export.run(loaded, x_val)
    return {"loaded": loaded, "accuracy": float(metric(y_val, predictions)),
            "partitions": int(report.delegate_partitions), "nodes_outside": len(report.not_delegated),
            "integer_only": bool(report.integer_only)}


def _frontier(candidates: List[Candidate]) -> List[str]:
    """Names of the candidates no other candidate beats in both size and metric (smaller file first)."""
    usable = sorted((c for c in candidates if c.ok and not c.reference and c.accuracy is not None),
                    key=lambda c: (c.bytes, -c.accuracy))
    front, best = [], -math.inf
    for c in usable:
        if c.accuracy > best:
            front.append(c.name)
            best = c.accuracy
    return front


def _recommend(candidates, float_metric, max_drop, target_bytes) -> Tuple[Optional[str], str]:
    usable = [c for c in candidates if c.ok and not c.reference and c.accuracy is not None]
    if not usable:
        return None, "no candidate produced a file"
    pool = usable
    rules = []
    if max_drop is not None:
        floor = float_metric - max_drop / 100.0
        pool = [c for c in pool if c.accuracy >= floor - 1e-12]
        rules.append(f"within {max_drop:g} point{'' if max_drop == 1 else 's'} of the float32 file "
                     f"({float_metric:.4f})")
    if target_bytes is not None:
        pool = [c for c in pool if c.bytes <= target_bytes]
        rules.append(f"at most {target_bytes} bytes")
    if not pool:
        return None, f"no candidate is {' and '.join(rules)}; see the frontier"
    if max_drop is not None:
        best = min(pool, key=lambda c: (c.bytes, -c.accuracy))
        return best.name, f"{best.name}: the smallest file {' and '.join(rules)} ({best.bytes} bytes, " \
                          f"{best.accuracy:.4f})"
    best = max(pool, key=lambda c: (c.accuracy, -c.bytes))
    return best.name, f"{best.name}: the most accurate file {' and '.join(rules)} ({best.accuracy:.4f}, " \
                      f"{best.bytes} bytes)"


# ----------------------------------------------------------------------------------------------- entry point
def compress_model(model, train, validation, *, methods: Optional[Sequence[str]] = None,
                   max_accuracy_drop: Optional[float] = None, target_bytes: Optional[int] = None,
                   time_budget: Optional[float] = None, loss=None, metric: Optional[Callable] = None,
                   metric_name: Optional[str] = None, out_dir=None, epochs: float = 2.0, batch_size: int = 64,
                   learning_rate: float = 5e-4, calibration_size: int = 256, latency_rounds: int = 10,
                   distill: bool = False, seed: int = 0, verbose: int = 1) -> CompressionResult:
    """Runs every candidate method on a trained model and returns the size/accuracy frontier and a recommendation.

    Args:
        model: a trained tf_keras (or Keras 3) functional or Sequential model with one input and one output;
            it is not modified.
        train: ``(x_train, y_train)`` arrays for fine-tuning and calibration.
        validation: ``(x_val, y_val)`` arrays; every candidate's metric is measured on them from its file.
        methods: names from :data:`METHODS` (default: all but the ``tfmot_qat`` reference). They run cheapest
            first.
        max_accuracy_drop: recommend the smallest file whose metric is at most this many points (0.01 of a
            fraction) below the float32 file's. Default 1.0 when ``target_bytes`` is not given either.
        target_bytes: recommend the most accurate file of at most this many bytes (with ``max_accuracy_drop``
            too: the smallest file meeting both).
        time_budget: seconds; no new candidate starts once this much time has passed (the report keeps what ran).
        loss: fine-tuning loss; default sparse categorical cross-entropy, from logits unless the model ends in a
            softmax. With a custom ``loss``, labels are not checked as class indices.
        metric: ``metric(y_true, y_pred) -> float``, higher is better (default: top-1 accuracy of integer labels).
        metric_name: its name in the report (default "accuracy" or the function's name).
        out_dir: folder for the files and reports (created); None keeps everything in memory.
        epochs: fine-tuning epochs per candidate (fractions allowed).
        batch_size, learning_rate: of the fine-tuning (Adam).
        calibration_size: training images used to calibrate post-training quantization.
        latency_rounds: interleaved timing rounds (0 skips latency).
        distill: fine-tune every candidate on the labels blended with the float model's own predictions
            (knowledge distillation, :class:`tfq_ext.DistillationLoss`, alpha 0.5, temperature 2); the
            tfmot reference always trains on the labels alone. Needs the default classification loss. Off by
            default: on the conv-BN Fashion-MNIST CNN it moved the candidates' accuracy by +0.16 points on
            average, one seed (benchmarks/results/distill.md).
        seed: random seed of every candidate.
        verbose: 0 silent, 1 stage lines and one line per epoch, 2 also Keras progress bars and k-means logs.

    Returns:
        A :class:`CompressionResult`.
    """
    t0 = time.perf_counter()
    model = ensure_tf_keras_model(model, "model")
    methods = _check_methods(methods)
    max_accuracy_drop = _check_drop(max_accuracy_drop)
    target_bytes = _check_positive(target_bytes, "target_bytes", int)
    time_budget = _check_positive(time_budget, "time_budget")
    epochs = _check_positive(epochs, "epochs", allow_none=False)
    batch_size = _check_positive(batch_size, "batch_size", int, allow_none=False)
    learning_rate = _check_positive(learning_rate, "learning_rate", allow_none=False)
    calibration_size = _check_positive(calibration_size, "calibration_size", int, allow_none=False)
    if isinstance(latency_rounds, bool) or not isinstance(latency_rounds, int) or latency_rounds < 0:
        raise ValueError(f"`latency_rounds` must be an int >= 0. Received: latency_rounds={latency_rounds!r}")
    if metric is not None and not callable(metric):
        raise TypeError(f"`metric` must be a callable metric(y_true, y_pred) -> float. Received: {metric!r}")
    if max_accuracy_drop is None and target_bytes is None:
        max_accuracy_drop = 1.0
    if loss is None and metric is None:
        (x, y), (x_val, y_val) = check_classification_data(model, train, validation)
    else:
        shape = _input_shape(model)
        (x, y), (x_val, y_val) = _as_xy(train, "train"), _as_xy(validation, "validation")
        _check_x(x, shape, "train")
        _check_x(x_val, shape, "validation")
    metric_name = metric_name or ("accuracy" if metric is None else getattr(metric, "__name__", "metric"))
    metric = metric or accuracy
    if not isinstance(distill, bool):
        raise TypeError(f"`distill` must be True or False. Received: distill={distill!r}")
    output_shape = tuple(model.outputs[0].shape)
    can_distill = loss is None and len(output_shape) == 2
    if distill and not can_distill:
        raise ValueError("`distill=True` needs the default classification loss (loss=None) and a model output of "
                         f"shape (batch, classes). Received: loss={loss!r}, output shape {output_shape}")
    loss = loss or _default_loss(model)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ValueError(f"`out_dir` must be a folder. Received: out_dir={str(out_dir)!r}, which is a file")
        out.mkdir(parents=True, exist_ok=True)

    import tflite_export
    from tfq_ext.qat.float_lowering import fold_batch_norms

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]  # fractions of an epoch then see a random subset
    fit_verbose = 0 if verbose <= 0 else (1 if verbose >= 2 and sys.stdout.isatty() else 2)
    labels, label_loss = y, loss
    if distill:
        from tfq_ext._training import DistillationLoss, distillation_targets

        _log(f"distillation: the float model's predictions on {len(x)} training examples", verbose)
        probabilities = _outputs_probabilities(model)
        y = distillation_targets(model, x, labels, from_logits=not probabilities)
        loss = DistillationLoss(from_logits=not probabilities, alpha=_DISTILL_ALPHA, temperature=_DISTILL_T)
    ctx = _Context(model=model, folded=fold_batch_norms(model), x=x, y=y, loss=loss, labels=labels,
                   label_loss=label_loss, epochs=epochs,
                   batch_size=batch_size, learning_rate=learning_rate, calibration=x[:calibration_size],
                   fit_verbose=fit_verbose, verbose=1 if verbose >= 2 else 0, seed=seed)

    _log(f"float32 reference: converting and evaluating on {len(x_val)} validation examples", verbose)
    float_file = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    float_measure = _measure_file(float_file, x_val, y_val, metric)
    float_row = {"file": "float32.tflite" if out is not None else None, "bytes": len(float_file),
                 "accuracy": float_measure["accuracy"], "partitions": float_measure["partitions"],
                 "keras_accuracy": float(metric(y_val, model.predict(x_val, batch_size=256, verbose=0)))}
    _log(f"    float32: {metric_name} {float_row['accuracy']:.4f}, {len(float_file)} bytes", verbose)
    if out is not None:
        (out / "float32.tflite").write_bytes(float_file)

    plan = [(method, name, setting, METHODS[method] + suffix) for method in methods
            for name, setting, suffix in _SETTINGS[method]]
    candidates: List[Candidate] = []
    loaded: Dict[str, bytes] = {}
    plans: Dict[str, list] = {m: [] for m in _PLANS}
    for i, (method, name, setting, description) in enumerate(plan):
        candidate = Candidate(name=name, method=method, description=description,
                              reference=method in REFERENCE_METHODS)
        candidates.append(candidate)
        elapsed = time.perf_counter() - t0
        if time_budget is not None and elapsed >= time_budget:
            candidate.status, candidate.error = "skipped", f"time budget spent ({elapsed:.0f} s of {time_budget:g} s)"
            _log(f"{i + 1}/{len(plan)} {name}: skipped, {candidate.error}", verbose)
            continue
        if method in _PLANS:
            mine = _PLANS[method](ctx, setting)
            same = next((earlier for earlier, theirs in plans[method] if theirs == mine), None)
            if same is not None:
                candidate.status, candidate.error = "skipped", f"same layers and blocks as {same} on this model"
                _log(f"{i + 1}/{len(plan)} {name}: skipped, {candidate.error}", verbose)
                continue
            plans[method].append((name, mine))
        _log(f"{i + 1}/{len(plan)} {name}: {description}", verbose)
        start = time.perf_counter()
        keras.utils.set_random_seed(seed)
        try:
            content = _smallest_form(_BUILDERS[method](ctx, setting))
            measured = _measure_file(content, x_val, y_val, metric)
        except Exception as exc:  # one method failing on this model must not lose the others' results
            candidate.status, candidate.error = "failed", f"{type(exc).__name__}: {exc}"[:2000]
            candidate.seconds = time.perf_counter() - start
            _log(f"    {name} failed: {candidate.error[:300]}", verbose)
            continue
        candidate.seconds = round(time.perf_counter() - start, 2)
        candidate.bytes = len(content)
        candidate.compressed = tflite_export.is_compressed(content)
        candidate.loaded_bytes = len(measured["loaded"]) if candidate.compressed else None
        for key in ("accuracy", "partitions", "nodes_outside", "integer_only"):
            setattr(candidate, key, measured[key])
        loaded[name] = measured["loaded"]
        if out is not None:
            candidate.file = _file_name(name)
            (out / candidate.file).write_bytes(content)
        _log(f"    {name}: {metric_name} {candidate.accuracy:.4f}, {candidate.bytes} bytes "
             f"({len(float_file) / candidate.bytes:.1f}x smaller than float32), {candidate.partitions} XNNPACK "
             f"partition(s), {candidate.seconds:.0f} s", verbose)

    if latency_rounds and loaded:
        _log(f"latency: float32 and {len(loaded)} files interleaved on XNNPACK, 1 thread", verbose)
        timing = tflite_export.compare_latency({"float32": float_file, **loaded}, rounds=latency_rounds,
                                               runs_per_round=10, num_threads=1)
        float_row["latency_ms"] = timing["models"]["float32"]["median_ms"]
        for c in candidates:
            if c.name in loaded:
                c.latency_ms = timing["models"][c.name]["median_ms"]

    frontier = _frontier(candidates)
    recommended, reason = _recommend(candidates, float_row["accuracy"], max_accuracy_drop, target_bytes)
    result = CompressionResult(
        float=float_row, candidates=candidates, frontier=frontier, recommended=recommended, recommendation=reason,
        metric=metric_name, max_accuracy_drop=max_accuracy_drop, target_bytes=target_bytes,
        out_dir=str(out) if out is not None else None, seconds=time.perf_counter() - t0, peak_rss_mb=_peak_rss_mb(),
        settings={"methods": methods, "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                  "calibration_size": calibration_size,
                  "distill": {"alpha": _DISTILL_ALPHA, "temperature": _DISTILL_T} if distill else False,
                  "train_examples": int(len(x)),
                  "validation_examples": int(len(x_val)), "seed": seed, "time_budget": time_budget,
                  "latency": "XNNPACK, 1 thread, batch 1, median of interleaved rounds of 10 invokes"})
    if out is not None:
        if recommended is not None:
            shutil.copyfile(out / result.candidate(recommended).file, out / "recommended.tflite")
        (out / "report.json").write_text(json.dumps(result.to_dict(), indent=2))
        (out / "report.md").write_text(result.to_markdown())
        try:
            result.plot(out / "frontier.png")
        except ImportError:  # matplotlib is optional
            pass
    _log(f"done in {result.seconds:.0f} s; {reason}", verbose)
    return result


def _check_drop(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`max_accuracy_drop` must be a number of points >= 0 (1.0 = one percentage point) or "
                         f"None. Received: max_accuracy_drop={value!r}")
    return float(value)
