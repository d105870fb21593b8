"""KQ on a trained CNN: choose K per layer from a bits budget, cluster the kernels, fine-tune the codebooks.

``quantize_kernels`` works on any tf_keras model with Conv2D / DepthwiseConv2D layers (no tfq_ext layer is
needed at training time); ``conv_bits`` reports bits per conv weight with everything counted (indices,
quantized codebooks, their scales, and the conv layers left as they are); ``to_dense_model`` rebuilds plain
layers with the codebook kernels for ``tflite_export.convert(..., per_channel=False)``.

Forward/backward of the fine-tune: see ``tfq_ext.kq.layers`` (6-bit codebook fake-quant with clipped STE,
mean gradient per codeword).

References: Yu et al. 2020, arXiv 2003.05148 (KQ).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence

import numpy as np

from tfq_ext._clone import replace_layers
from tfq_ext._keras import ensure_tf_keras_model, keras, tf
from tfq_ext._training import fit_epochs
from tfq_ext.kq.layers import KQ_LAYERS, SCALE_BITS, KQConv2D, KQDepthwiseConv2D, check_codebook_bits, kq_bits
from tfq_ext.ops.blocks import num_blocks, to_blocks
from tfq_ext.ops.kmeans import clamp_k, kmeans

__all__ = ["DEFAULT_BITS_PER_WEIGHT", "KQReport", "choose_codewords", "conv_bits", "export_tflite",
           "quantize_kernels", "to_dense_model"]

DEFAULT_BITS_PER_WEIGHT = 1.7


def _walk(layers) -> Iterator[keras.layers.Layer]:
    for layer in layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer.layers)
        else:
            yield layer


def _is_conv(layer) -> bool:
    """A plain Keras Conv2D (groups 1) or DepthwiseConv2D, channels last (exact classes: subclasses may not
    compute a plain convolution of ``kernel``)."""
    if type(layer) is keras.layers.Conv2D:
        return layer.groups == 1 and layer.data_format == "channels_last"
    return type(layer) is keras.layers.DepthwiseConv2D and layer.data_format == "channels_last"


def _kernel_of(layer) -> tf.Variable:
    return layer.depthwise_kernel if isinstance(layer, keras.layers.DepthwiseConv2D) else layer.kernel


def _shape(layer):
    return tuple(int(s) for s in _kernel_of(layer).shape)


def _kept_bits(n_weights: int, kept_bits: int) -> int:
    # An int8 kernel (per-tensor, as exported with per_channel=False) also stores one float32 scale.
    return n_weights * kept_bits + (SCALE_BITS if kept_bits < 32 else 0)


def _check_kept_bits(kept_bits) -> int:
    if kept_bits not in (8, 16, 32) or isinstance(kept_bits, bool):
        raise ValueError(f"`kept_bits` must be 8 (int8 export), 16 or 32. Received: kept_bits={kept_bits!r}")
    return int(kept_bits)


def conv_bits(model: keras.Model, kept_bits: int = 8) -> dict:
    """Bits per conv weight of ``model``, everything counted.

    KQ kernels cost ``kq_bits`` (indices + quantized codebook + float32 scale); other Conv2D/DepthwiseConv2D
    kernels cost ``kept_bits`` per weight (plus a float32 scale when below 32 bits). Biases, BN and Dense layers
    are not conv weights and are not counted here (``tfq_ext.model_size`` counts the whole model).

    Returns:
        {"bits_per_weight", "bits", "weights", "layers": {name: {"method", "weights", "bits", "bits_per_weight"}}}
    """
    model = ensure_tf_keras_model(model, "model")
    kept_bits = _check_kept_bits(kept_bits)
    layers: dict[str, dict] = {}
    for layer in _walk(model.layers):
        if isinstance(layer, KQ_LAYERS):
            n, bits, method = int(np.prod(layer.kernel_shape)), layer.kernel_bits(), f"kq K={layer.n_codewords}"
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            n = int(np.prod(_shape(layer)))
            bits, method = _kept_bits(n, kept_bits), f"kept ({kept_bits}-bit)"
        else:
            continue
        layers[layer.name] = {"method": method, "weights": n, "bits": bits, "bits_per_weight": bits / n}
    total_w = sum(v["weights"] for v in layers.values())
    total_b = sum(v["bits"] for v in layers.values())
    return {"bits_per_weight": total_b / max(total_w, 1), "bits": total_b, "weights": total_w, "layers": layers}


def _codeword_cap(n_kernels: int) -> int:
    # At least 4 kernels per codeword (as iPQ), rounded down to a power of two so that indices use whole bits.
    k = clamp_k(n_kernels, n_kernels)
    return 1 << math.floor(math.log2(k))


def choose_codewords(model: keras.Model, bits_per_weight: float = DEFAULT_BITS_PER_WEIGHT, *,
                     codebook_bits: int = 6, min_kernels: int = 128, kept_bits: int = 8,
                     exclude: Sequence[str] = ()) -> dict[str, int | None]:
    """K per conv layer so that the whole model's bits per conv weight stay within ``bits_per_weight``.

    Conv layers with fewer than ``min_kernels`` kernels (first convs with 1-3 input channels), 1x1 convs and
    ``exclude``d layers are kept (None) and their cost (``kept_bits`` per weight) is taken from the budget first.
    Every other layer gets the largest power-of-two K (at most n_kernels / 4) whose kernel bits fit the per-weight
    budget left; leftover bits then double K where it still fits, most kernels per codeword first.

    Returns:
        {layer name: K, or None for layers left as they are}, in model order.
    """
    model = ensure_tf_keras_model(model, "model")
    kept_bits = _check_kept_bits(kept_bits)
    codebook_bits = check_codebook_bits(codebook_bits)
    if isinstance(bits_per_weight, bool) or not isinstance(bits_per_weight, numbers.Real) \
            or not 0 < bits_per_weight <= 32 or not math.isfinite(bits_per_weight):
        raise ValueError(f"`bits_per_weight` must be a number in (0, 32]. Received: "
                         f"bits_per_weight={bits_per_weight!r}")
    convs = _eligible(model, min_kernels, exclude, require=True)
    counted = {layer.name: layer for layer in _walk(model.layers)
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D) + KQ_LAYERS)}
    weights = {name: (int(np.prod(layer.kernel_shape)) if isinstance(layer, KQ_LAYERS)
                      else int(np.prod(_shape(layer)))) for name, layer in counted.items()}
    fixed = sum(counted[n].kernel_bits() if isinstance(counted[n], KQ_LAYERS) else _kept_bits(weights[n], kept_bits)
                for n in counted if n not in convs)
    budget = bits_per_weight * sum(weights.values())
    n_quant = sum(weights[n] for n in convs)
    per_weight = (budget - fixed) / n_quant
    chosen: dict[str, int] = {}
    for name, layer in convs.items():
        shape = _shape(layer)
        n_kernels, dim = num_blocks("conv", shape, 1), shape[0] * shape[1]
        cap = _codeword_cap(n_kernels)
        k = min(2, cap)  # a layer of fewer than 8 kernels (only with a small min_kernels) gets one codeword
        if kq_bits(n_kernels, dim, k, codebook_bits) > per_weight * weights[name]:
            smallest = [(num_blocks("conv", _shape(c), 1), _shape(c)[0] * _shape(c)[1]) for c in convs.values()]
            minimum = (fixed + sum(kq_bits(n, d, min(2, _codeword_cap(n)), codebook_bits) for n, d in smallest)) \
                / sum(weights.values())
            raise ValueError(f"`bits_per_weight` is too small: even K=2 codewords in every quantized layer need "
                             f"{minimum:.3f} bits per conv weight (kept layers counted at {kept_bits} bits). "
                             f"Received: bits_per_weight={bits_per_weight}")
        while k * 2 <= cap and kq_bits(n_kernels, dim, k * 2, codebook_bits) <= per_weight * weights[name]:
            k *= 2
        chosen[name] = k

    def cost(name, k):
        shape = _shape(convs[name])
        return kq_bits(num_blocks("conv", shape, 1), shape[0] * shape[1], k, codebook_bits)

    spent = fixed + sum(cost(n, k) for n, k in chosen.items())
    while True:
        options = [(num_blocks("conv", _shape(convs[n]), 1) / k, -(cost(n, 2 * k) - cost(n, k)), n)
                   for n, k in chosen.items() if 2 * k <= _codeword_cap(num_blocks("conv", _shape(convs[n]), 1))
                   and spent + cost(n, 2 * k) - cost(n, k) <= budget]
        if not options:
            break
        _, _, name = max(options)
        spent += cost(name, 2 * chosen[name]) - cost(name, chosen[name])
        chosen[name] *= 2
    return {name: chosen.get(name) for name in counted}


def _eligible(model, min_kernels, exclude, require: bool) -> dict[str, keras.layers.Layer]:
    if isinstance(min_kernels, bool) or not isinstance(min_kernels, int) or min_kernels < 1:
        raise ValueError(f"`min_kernels` must be a positive int. Received: min_kernels={min_kernels!r}")
    if isinstance(exclude, str) or not all(isinstance(n, str) for n in exclude):
        raise TypeError(f"`exclude` must be a sequence of layer names. Received: exclude={exclude!r}")
    convs = [layer for layer in model.layers if _is_conv(layer)]
    multi = [layer for layer in convs if _shape(layer)[0] * _shape(layer)[1] > 1]
    if require and not multi:
        raise ValueError("`model` has no Conv2D (groups=1) or DepthwiseConv2D layer with k x k > 1 kernels to "
                         "quantize (channels last, top level). Received: model with layers "
                         f"{[type(layer).__name__ for layer in model.layers]}")
    chosen = {layer.name: layer for layer in multi
              if layer.name not in exclude and num_blocks("conv", _shape(layer), 1) >= min_kernels}
    if require and not chosen:
        raise ValueError(f"no conv layer is large enough to quantize: every k x k conv has fewer than "
                         f"min_kernels={min_kernels} kernels or is excluded. Lower `min_kernels`. Received: "
                         f"min_kernels={min_kernels}, kernels per layer "
                         f"{ {layer.name: num_blocks('conv', _shape(layer), 1) for layer in multi} }")
    return chosen


class KQReport(dict):
    """What ``quantize_kernels`` did: K per layer, bits per conv weight (``conv_bits``), accuracies."""


def _kq_layer(layer, k: int, codebook_bits: int):
    cfg = layer.get_config()
    common = {"strides": cfg["strides"], "padding": cfg["padding"], "dilation_rate": cfg["dilation_rate"],
              "n_codewords": k, "codebook_bits": codebook_bits, "activation": cfg["activation"],
              "use_bias": cfg["use_bias"], "name": layer.name}
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return KQDepthwiseConv2D(cfg["kernel_size"], depth_multiplier=cfg["depth_multiplier"], **common)
    return KQConv2D(cfg["filters"], cfg["kernel_size"], **common)


def _check_codewords(n_codewords, convs) -> dict[str, int]:
    if isinstance(n_codewords, dict):
        unknown = sorted(set(n_codewords) - set(convs))
        if unknown:
            raise ValueError(f"`n_codewords` names layers that are not quantizable conv layers: {unknown}. "
                             f"Quantizable: {sorted(convs)}. Received: n_codewords={n_codewords!r}")
        wanted = dict(n_codewords)
    else:
        wanted = {name: n_codewords for name in convs}
    for name, k in wanted.items():
        n_kernels = num_blocks("conv", _shape(convs[name]), 1)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_kernels:
            raise ValueError(f"`n_codewords` for layer {name!r} must be an int in [1, {n_kernels}] (its number of "
                             f"kernels). Received: n_codewords={k!r}")
    return {name: int(k) for name, k in wanted.items()}


def quantize_kernels(model: keras.Model, x=None, y=None, *, bits_per_weight: float | None = None,
                     n_codewords: int | dict[str, int] | None = None, codebook_bits: int = 6,
                     min_kernels: int = 128, kept_bits: int = 8, exclude: Sequence[str] = (), n_iter: int = 20,
                     finetune_epochs: float = 1.0, batch_size: int = 128, optimizer=None, loss=None,
                     metrics=("accuracy",), train_other_layers: bool = True, validation_data=None, seed: int = 0,
                     fold_batch_norm: bool = True, verbose: int = 1):
    """Kernel quantization (KQ) of a trained CNN's Conv2D / DepthwiseConv2D layers.

    Every k x k kernel of an eligible layer (one (in, out) pair; one channel for depthwise) is clustered with
    k-means (k-means++, ``n_iter`` EM steps) into a per-layer codebook of K kernels; the layer becomes a
    ``KQConv2D`` / ``KQDepthwiseConv2D`` holding the codebook and one index per kernel, and the codebook is
    fine-tuned with ``codebook_bits`` fake-quant (clipped STE) on (x, y).

    Args:
        model: a trained tf_keras model (plain layers, no tfq_ext needed); it is not modified.
        x, y: fine-tuning data (arrays, or a ``tf.data.Dataset`` of (x, y) in ``x``); None skips fine-tuning.
        bits_per_weight: target bits per conv weight, everything counted (see :func:`choose_codewords`);
            the default when ``n_codewords`` is not given either is 1.7.
        n_codewords: K for every eligible layer (int) or per layer ({name: K}); replaces the budget.
        codebook_bits: bits per codebook value, in [2, 8] (the paper's 6).
        min_kernels: layers with fewer kernels are left as they are (and counted at ``kept_bits``).
        kept_bits: storage assumed for convs left as they are: 8 (int8 export, plus a float32 scale) or 32.
        exclude: names of conv layers to leave as they are.
        finetune_epochs: epochs of fine-tuning (a fraction uses that share of the arrays).
        optimizer, loss, metrics: for fine-tuning (default Adam(1e-4) and the model's compiled loss).
        train_other_layers: also fine-tune the layers that are not KQ (BN, Dense, kept convs); else only
            codebooks and KQ biases train.
        validation_data: (x, y) arrays on which accuracy is measured before and after fine-tuning.
        fold_batch_norm: fold each BatchNormalization that follows a conv into it first (exact at inference),
            so that the kernels are clustered as the int8 file stores them; otherwise the converter folds the
            BN per output channel after KQ and shared kernels differ in the file (no compression).

    Returns:
        (kq_model, report): the quantized model (compiled) and a :class:`KQReport` with "layers" (K per layer),
        "bits_per_conv_weight" and the ``conv_bits`` breakdown.
    """
    model = ensure_tf_keras_model(model, "model")
    codebook_bits = check_codebook_bits(codebook_bits)
    kept_bits = _check_kept_bits(kept_bits)
    if not isinstance(fold_batch_norm, bool):
        raise TypeError(f"`fold_batch_norm` must be True or False. Received: fold_batch_norm={fold_batch_norm!r}")
    if fold_batch_norm and any(isinstance(layer, keras.layers.BatchNormalization) for layer in _walk(model.layers)):
        from tfq_ext.qat.float_lowering import fold_batch_norms

        model = fold_batch_norms(model)
    if bits_per_weight is not None and n_codewords is not None:
        raise ValueError("pass either `bits_per_weight` or `n_codewords`, not both. Received: "
                         f"bits_per_weight={bits_per_weight!r}, n_codewords={n_codewords!r}")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, (int, float)) or finetune_epochs < 0:
        raise ValueError(f"`finetune_epochs` must be a number >= 0. Received: finetune_epochs={finetune_epochs!r}")
    convs = _eligible(model, min_kernels, exclude, require=True)
    if n_codewords is not None:
        plan = _check_codewords(n_codewords, convs)
    else:
        target = DEFAULT_BITS_PER_WEIGHT if bits_per_weight is None else bits_per_weight
        plan = {name: k for name, k in choose_codewords(model, target, codebook_bits=codebook_bits,
                                                        min_kernels=min_kernels, kept_bits=kept_bits,
                                                        exclude=exclude).items() if k is not None}
    loss = loss or getattr(model, "loss", None)
    if x is not None and finetune_epochs > 0 and loss is None:
        raise ValueError("fine-tuning needs a `loss` (the model is not compiled). Received: loss=None")

    codebooks = {}
    for name, k in plan.items():
        layer = convs[name]
        kernels = to_blocks(tf.convert_to_tensor(_kernel_of(layer)), "conv", 1).numpy()
        bias = layer.bias.numpy() if layer.use_bias else None
        codebooks[name] = (kmeans(kernels, k, n_iter=n_iter, seed=seed), bias)
    kq_model = replace_layers(model, lambda layer: _kq_layer(layer, plan[layer.name], codebook_bits)
                        if layer.name in plan else None)
    for name, (result, bias) in codebooks.items():
        layer = kq_model.get_layer(name)
        layer.set_codebook(result.centroids, result.assignments)
        if bias is not None:
            layer.bias.assign(bias)
    if not train_other_layers:
        for layer in kq_model.layers:
            if not isinstance(layer, KQ_LAYERS):
                layer.trainable = False
    kq_model.compile(optimizer=optimizer() if callable(optimizer) else (optimizer or keras.optimizers.Adam(1e-4)),
                     loss=loss, metrics=list(metrics))

    report = KQReport(layers={name: {"K": k, "kernels": num_blocks("conv", _shape(convs[name]), 1),
                                     "inertia": codebooks[name][0].inertia} for name, k in plan.items()})
    if validation_data is not None:
        report["accuracy_before_finetune"] = _accuracy(kq_model, validation_data)
    if x is not None and finetune_epochs > 0:
        _finetune(kq_model, x, y, finetune_epochs, batch_size, seed)
        if validation_data is not None:
            report["accuracy_after_finetune"] = _accuracy(kq_model, validation_data)
    bits = conv_bits(kq_model, kept_bits)
    report["bits_per_conv_weight"] = bits["bits_per_weight"]
    report["conv_bits"] = bits
    if verbose:
        print(f"[KQ] K per layer {plan}; {bits['bits_per_weight']:.3f} bits per conv weight"
              + "".join(f"; {k} {report[k]:.4f}" for k in ("accuracy_before_finetune", "accuracy_after_finetune")
                        if k in report), flush=True)
    return kq_model, report


def _finetune(model, x, y, epochs: float, batch_size: int, seed: int) -> None:
    fit_epochs(model, x, y, epochs, batch_size, seed=seed)


def _accuracy(model, data) -> float:
    x, y = data
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=512), axis=-1) == np.asarray(y)))


def to_dense_model(model: keras.Model) -> keras.Model:
    """Copy of ``model`` with every KQ layer replaced by the plain Conv2D / DepthwiseConv2D holding its kernel.

    The kernel values are the quantized codebook entries, so identical kernels stay identical. Export with
    ``tflite_export.convert(dense, representative_data, per_channel=False)``: one per-tensor int8 scale keeps
    them identical in the file too (per-channel scales would not).
    """
    model = ensure_tf_keras_model(model, "model")
    weights: dict[str, list[np.ndarray]] = {}

    def replace(layer):
        if not isinstance(layer, KQ_LAYERS):
            return None
        weights[layer.name] = [layer.kq_kernel().numpy()] + ([layer.bias.numpy()] if layer.use_bias else [])
        common = {"strides": layer.strides, "padding": layer.padding, "dilation_rate": layer.dilation_rate,
                  "activation": keras.activations.serialize(layer.activation), "use_bias": layer.use_bias,
                  "name": layer.name}
        if isinstance(layer, KQDepthwiseConv2D):
            return keras.layers.DepthwiseConv2D(layer.kernel_size, depth_multiplier=layer.depth_multiplier, **common)
        return keras.layers.Conv2D(layer.filters, layer.kernel_size, **common)

    dense = replace_layers(model, replace)
    for name, values in weights.items():
        dense.get_layer(name).set_weights(values)
    return dense


def export_tflite(model: keras.Model, representative_data, *, compressed: bool = True, **convert_kwargs) -> bytes:
    """Full-int8 TFLite file of a KQ model; with ``compressed=True`` (default) the codebook-compressed file.

    Per-tensor int8 weights (``per_channel=False``) keep identical kernels identical in the file; the loader
    layout of ``tflite_export.compress`` then runs at dense speed after ``tflite_export.decompress`` (or
    ``tfq_decompress`` in C).

    Args:
        model: A model from :func:`quantize_kernels` (or any model with KQ layers).
        representative_data: Calibration inputs for ``tflite_export.convert``.
        compressed: Return ``tflite_export.compress`` of the file.
        **convert_kwargs: Passed to ``tflite_export.convert`` (``per_channel`` must stay False).

    Returns:
        The flatbuffer bytes.

    Raises:
        ValueError: ``per_channel=True``, no KQ layer, or (for a compressed file) a BatchNormalization after a
            KQ convolution, which the converter would fold per output channel (quantize with
            ``fold_batch_norm=True``).
    """
    import tflite_export  # the deployment package; imported here so that training never needs it

    model = ensure_tf_keras_model(model, "model")
    if not isinstance(compressed, bool):
        raise TypeError(f"`compressed` must be True or False. Received: compressed={compressed!r}")
    if convert_kwargs.get("per_channel", False):
        raise ValueError("KQ files need per-tensor weights (`per_channel=False`): per-channel scales make the "
                         "shared kernels differ in int8. Received: per_channel=True")
    kq_layers = [layer for layer in _walk(model.layers) if isinstance(layer, KQ_LAYERS)]
    if not kq_layers:
        raise ValueError(f"`model` has no KQ layer; pass a model from `quantize_kernels`. Received: "
                         f"model={model.name!r}")
    if compressed:
        kq_outputs = {id(layer.output) for layer in kq_layers if layer._inbound_nodes}
        after = [layer.name for layer in _walk(model.layers) if isinstance(layer, keras.layers.BatchNormalization)
                 and layer._inbound_nodes and id(layer.input) in kq_outputs]
        if after:
            raise ValueError(f"BatchNormalization layers {after} follow KQ convolutions: the converter folds them "
                             f"per output channel, so the shared kernels differ in the file. Quantize with "
                             f"`quantize_kernels(..., fold_batch_norm=True)` (the default).")
    convert_kwargs["per_channel"] = False
    flatbuffer = tflite_export.convert(to_dense_model(model), representative_data, **convert_kwargs)
    return tflite_export.compress(flatbuffer) if compressed else flatbuffer
