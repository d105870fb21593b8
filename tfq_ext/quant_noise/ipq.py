"""Iterative product quantization (iPQ): quantize layer groups in stages, fine-tune the rest in between.

``add_quant_noise`` turns a model's Dense/Conv2D/Embedding layers into Quant-Noise layers (weights kept);
``quantize_pq`` runs iPQ on a trained model; ``to_dense_model`` rebuilds plain layers with the codebook kernels
for export (per-tensor int8 keeps identical blocks identical, so the compressed TFLite file can share them).

References: Stock et al. 2020, arXiv 1907.05686; Fan, Stock et al. 2021, arXiv 2004.07320.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from tfq_ext._clone import replace_layers
from tfq_ext._keras import ensure_tf_keras_model, keras, tf
from tfq_ext._training import fit_epochs
from tfq_ext.ops.blocks import num_blocks, to_blocks
from tfq_ext.ops.kmeans import clamp_k, kmeans
from tfq_ext.quant_noise.layers import QuantNoiseConv2D, QuantNoiseDense, QuantNoiseEmbedding
from tfq_ext.quant_noise.pq_layers import PQ_LAYERS, PQConv2D, PQDense, PQEmbedding

__all__ = ["add_quant_noise", "quantize_pq", "to_dense_model", "DEFAULT_BLOCK_SIZES", "PQStage"]

DEFAULT_BLOCK_SIZES = {"dense": 8, "conv": 4, "embedding": 4}  # conv k x k > 1 always uses one kernel per block
_KIND = {"Dense": "dense", "QuantNoiseDense": "dense", "Conv2D": "conv", "QuantNoiseConv2D": "conv",
         "Embedding": "embedding", "QuantNoiseEmbedding": "embedding"}


def _kind(layer) -> Optional[str]:
    kind = _KIND.get(type(layer).__name__)
    if kind == "conv" and (layer.groups != 1 or layer.data_format != "channels_last"):
        return None
    return kind


def _kernel(layer):
    return layer.embeddings if _kind(layer) == "embedding" else layer.kernel


def _fit_block_size(kind: str, shape, requested: int, name: str) -> int:
    """``requested``, or the largest power-of-two divisor below it (with a warning) when it does not divide."""
    split = shape[-1] if kind == "embedding" else shape[-2]
    if kind == "conv" and shape[0] * shape[1] > 1:
        return requested
    size = requested
    while size > 1 and split % size:
        size //= 2
    if size != requested:
        warnings.warn(f"layer {name!r}: block_size {requested} does not divide {split}; using {size}", stacklevel=3)
    return size


def _noise_rates(noise_rate) -> Dict[str, float]:
    """``noise_rate`` as {kind or layer name: rate}, every kind present (a float applies to all of them)."""
    if isinstance(noise_rate, dict):
        rates = {kind: 0.1 for kind in DEFAULT_BLOCK_SIZES}
        rates.update(noise_rate)
    else:
        rates = {kind: noise_rate for kind in DEFAULT_BLOCK_SIZES}
    for key, rate in rates.items():
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) or not 0.0 <= float(rate) < 1.0:
            where = "" if not isinstance(noise_rate, dict) else f"[{key!r}]"
            raise ValueError(f"`noise_rate{where}` must be a number in [0, 1). Received: {rate!r}")
    return {key: float(rate) for key, rate in rates.items()}


def add_quant_noise(model: keras.Model, noise_rate=0.1, noise: str = "proxy",
                    block_sizes: Optional[Dict[str, int]] = None, exclude: Sequence[str] = (),
                    **noise_kwargs) -> keras.Model:
    """Copy of ``model`` whose Dense/Conv2D/Embedding layers train with Quant-Noise (weights kept).

    Args:
        model: a built tf_keras model (Sequential or functional; nested models are copied as they are).
        noise_rate: probability that a block is noised in a training step (the paper uses 0.05-0.2); a float
            for every layer, or a dict by kind ("dense", "conv", "embedding") or layer name (names take
            precedence; kinds not given use 0.1), e.g. ``{"dense": 0.1, "embedding": 0.05, "attn_q": 0.05}``.
        noise: "proxy", "scalar" or "pq" (see ``tfq_ext.quant_noise.layers``).
        block_sizes: block length per kind ({"dense": 8, "conv": 4, "embedding": 4} by default) or per layer name
            (names take precedence); k x k convs use one kernel per block.
        exclude: names of layers to leave as they are.
    """
    model = ensure_tf_keras_model(model, "model")
    rates = _noise_rates(noise_rate)
    sizes = {**DEFAULT_BLOCK_SIZES, **(block_sizes or {})}
    classes = {"dense": QuantNoiseDense, "conv": QuantNoiseConv2D, "embedding": QuantNoiseEmbedding}
    kernels = {}

    def replace(layer):
        kind = _kind(layer)
        if kind is None or layer.name in exclude or type(layer).__name__.startswith("QuantNoise"):
            return None
        shape = tuple(int(s) for s in _kernel(layer).shape)
        block = _fit_block_size(kind, shape, sizes.get(layer.name, sizes[kind]), layer.name)
        rate = rates.get(layer.name, rates[kind])
        new = classes[kind].from_config({**layer.get_config(), "noise_rate": rate, "noise": noise,
                                         "block_size": block, **noise_kwargs})
        kernels[layer.name] = layer.get_weights()
        return new

    new_model = replace_layers(model, replace)
    for layer in new_model.layers:
        if layer.name in kernels:
            # The pq noise's centroids are not among the original weights: copy only what the original had.
            values = kernels[layer.name]
            originals = [w for w in layer.weights if w.name.split("/")[-1].split(":")[0] not in
                         ("noise_rate", "noise_centroids")]
            for variable, value in zip(originals, values):
                variable.assign(value)
            if layer.noise == "pq":
                layer.refresh_centroids()
    return new_model


class PQStage(dict):
    """What one iPQ stage did: layers, K and d per layer, accuracy before/after fine-tuning."""


def _pq_layer(layer, kind: str, block: int, k: int, int8_codebook: bool):
    cfg = layer.get_config()
    common = {"name": layer.name, "block_size": block, "n_centroids": k, "int8_codebook": int8_codebook}
    if kind == "dense":
        return PQDense(cfg["units"], activation=cfg["activation"], use_bias=cfg["use_bias"], **common)
    if kind == "conv":
        return PQConv2D(cfg["filters"], cfg["kernel_size"], strides=cfg["strides"], padding=cfg["padding"],
                        dilation_rate=cfg["dilation_rate"], activation=cfg["activation"], use_bias=cfg["use_bias"],
                        **common)
    return PQEmbedding(cfg["input_dim"], cfg["output_dim"], **common)


def quantize_pq(model: keras.Model, x=None, y=None, *, n_centroids: int = 256,
                block_sizes: Optional[Dict[str, int]] = None, stages: Optional[List[List[str]]] = None,
                n_iter: int = 20, finetune_epochs: float = 1, batch_size: int = 128, optimizer=None, loss=None,
                metrics=("accuracy",), int8_codebook: bool = False, exclude: Sequence[str] = (),
                validation_data=None, seed: int = 0, verbose: int = 1):
    """Iterative product quantization of ``model``'s Dense/Conv2D/Embedding layers.

    Each stage clusters the blocks of its layers (k-means++ init, ``n_iter`` EM steps, empty clusters split,
    K clamped to n_blocks / 4), swaps them for PQ layers, and fine-tunes the whole model on (x, y) for
    ``finetune_epochs`` epochs: centroids of quantized layers and all weights of layers not yet quantized train.

    Args:
        model: a trained tf_keras model (plain or Quant-Noise layers); it is not modified.
        x, y: fine-tuning data (arrays or a dataset in ``x``); None skips fine-tuning.
        n_centroids: K per layer before clamping (the reference's 256 gives 8-bit indices).
        block_sizes: block length per kind (default {"dense": 8, "conv": 4, "embedding": 4}) or per layer name
            (names take precedence; the reference uses 4 for attention projections); k x k convs use one kernel
            of k*k weights per block.
        stages: lists of layer names quantized together; default: one stage per layer, in model order.
        finetune_epochs: epochs of fine-tuning after each stage (fractions use that share of one epoch).
        optimizer, loss, metrics: for fine-tuning (default Adam(1e-3) and the model's own compiled loss).
        int8_codebook: fake-quantize centroids to int8 (1 byte per codebook value instead of 2).
        validation_data: (x, y) on which accuracy is measured before and after each stage's fine-tuning.

    Returns:
        (pq_model, stages): the quantized model (compiled) and a list of :class:`PQStage` records.
    """
    model = ensure_tf_keras_model(model, "model")
    sizes = {**DEFAULT_BLOCK_SIZES, **(block_sizes or {})}
    eligible = [layer.name for layer in model.layers if _kind(layer) is not None and layer.name not in exclude]
    if not eligible:
        raise ValueError("`model` has no Dense, Conv2D (groups=1, channels_last) or Embedding layer to quantize. "
                         f"Received: model with layers {[type(layer).__name__ for layer in model.layers]}")
    if stages is None:
        stages = [[name] for name in eligible]
    unknown = sorted({name for stage in stages for name in stage} - set(eligible))
    if unknown:
        raise ValueError(f"`stages` names layers that are not quantizable layers of the model: {unknown}. "
                         f"Quantizable: {eligible}")
    loss = loss or getattr(model, "loss", None)
    if x is not None and loss is None:
        raise ValueError("fine-tuning needs a `loss` (the model is not compiled). Received: loss=None")

    current = model
    records: List[PQStage] = []
    for stage_index, names in enumerate(stages):
        codebooks = {}
        for name in names:
            layer = current.get_layer(name)
            kind = _kind(layer)
            shape = tuple(int(s) for s in _kernel(layer).shape)
            block = _fit_block_size(kind, shape, sizes.get(name, sizes[kind]), name)
            n = num_blocks(kind, shape, block)
            k = clamp_k(n_centroids, n)
            if k < n_centroids:
                warnings.warn(f"layer {name!r} has {n} blocks: K clamped from {n_centroids} to {k} "
                              f"(at most n_blocks / 4)", stacklevel=2)
            blocks = to_blocks(tf.convert_to_tensor(_kernel(layer)), kind, block).numpy()
            result = kmeans(blocks, k, n_iter=n_iter, seed=seed)
            bias = layer.bias.numpy() if kind != "embedding" and layer.use_bias else None
            codebooks[name] = (kind, block, k, result, bias)

        def replace(layer):
            if layer.name not in codebooks:
                return None
            kind, block, k, _, _ = codebooks[layer.name]
            return _pq_layer(layer, kind, block, k, int8_codebook)

        current = replace_layers(current, replace)
        for name, (_, _, _, result, bias) in codebooks.items():
            layer = current.get_layer(name)
            layer.set_codebook(result.centroids, result.assignments)
            if bias is not None:
                layer.bias.assign(bias)
        current.compile(optimizer=optimizer() if callable(optimizer) else (optimizer or keras.optimizers.Adam(1e-3)),
                        loss=loss, metrics=list(metrics))
        record = PQStage(stage=stage_index, layers={n: {"K": c[2], "d": int(c[3].centroids.shape[1])}
                                                    for n, c in codebooks.items()})
        if validation_data is not None:
            record["accuracy_before_finetune"] = _accuracy(current, validation_data)
        if x is not None and finetune_epochs > 0:
            _finetune(current, x, y, finetune_epochs, batch_size, verbose)
            if validation_data is not None:
                record["accuracy_after_finetune"] = _accuracy(current, validation_data)
        if verbose:
            print(f"[iPQ] stage {stage_index + 1}/{len(stages)}: {dict(record)}", flush=True)
        records.append(record)
    return current, records


def _finetune(model, x, y, epochs: float, batch_size: int, verbose: int) -> None:
    # The first rows for a fractional epoch (the caller's order), as before; a dataset's share is taken too.
    fit_epochs(model, x, y, epochs, batch_size)


def _accuracy(model, data) -> float:
    x, y = data
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=512), axis=-1) == y))


def to_dense_model(model: keras.Model) -> keras.Model:
    """Copy of ``model`` with every PQ layer replaced by the plain layer holding its codebook kernel.

    Export it with ``tflite_export.convert(dense, representative_data, per_channel=False)``: per-tensor int8
    maps identical float blocks to identical int8 blocks, so ``tflite_export.compress`` can share them.
    """
    kernels = {}

    def replace(layer):
        if not isinstance(layer, PQ_LAYERS):
            if type(layer).__name__.startswith("QuantNoise"):
                base = {"QuantNoiseDense": keras.layers.Dense, "QuantNoiseConv2D": keras.layers.Conv2D,
                        "QuantNoiseEmbedding": keras.layers.Embedding}[type(layer).__name__]
                cfg = {k: v for k, v in layer.get_config().items()
                       if k not in ("noise_rate", "block_size", "noise", "num_bits", "n_centroids")}
                kernels[layer.name] = [w.numpy() for w in layer.weights
                                       if w.name.split("/")[-1].split(":")[0] not in ("noise_rate", "noise_centroids")]
                return base.from_config(cfg)
            return None
        cfg = layer.get_config()
        kernel = layer.pq_kernel().numpy()
        weights = [kernel] + ([layer.bias.numpy()] if getattr(layer, "bias", None) is not None else [])
        kernels[layer.name] = weights
        if isinstance(layer, PQDense):
            return keras.layers.Dense(cfg["units"], activation=cfg["activation"], use_bias=cfg["use_bias"],
                                      name=layer.name)
        if isinstance(layer, PQConv2D):
            return keras.layers.Conv2D(cfg["filters"], cfg["kernel_size"], strides=cfg["strides"],
                                       padding=cfg["padding"], dilation_rate=cfg["dilation_rate"],
                                       activation=cfg["activation"], use_bias=cfg["use_bias"], name=layer.name)
        return keras.layers.Embedding(cfg["input_dim"], cfg["output_dim"], name=layer.name)

    dense = replace_layers(model, replace)
    for name, weights in kernels.items():
        dense.get_layer(name).set_weights(weights)
    return dense
