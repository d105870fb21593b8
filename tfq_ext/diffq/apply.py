"""Entry points: put DiffQ (or the uniform baseline) on a model, read its sizes and bits, export it.

``apply_diffq`` returns a copy of a Sequential or functional model in which every layer with weights to quantize
is wrapped in a :class:`DiffQWrapper` (same name, same weights); the user's model is not modified.
``true_size`` is the packed size with rounded bits and every overhead, the same bytes the packed export writes.

References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np

from tfq_ext._compat import is_graph_model
from tfq_ext._keras import ensure_tf_keras_model, keras
from tfq_ext.diffq.wrappers import KERNEL_ATTRS, DiffQWrapper, UniformQuantWrapper, _QuantWrapper, weight_paths
from tfq_ext.ops import diffq as ops
from tfq_ext.ops.size import SizeReport
from tfq_ext.size import model_size

__all__ = ["apply_diffq", "apply_uniform", "set_penalty", "freeze_bits", "true_size", "size_report",
           "estimated_size", "mean_bits", "learned_bits", "to_dense_model", "export_tflite", "diffq_layers", "TARGET_MODES"]

TARGET_MODES = ("kernels", "all")


def _walk(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer)
        else:
            yield layer


def diffq_layers(model) -> List[_QuantWrapper]:
    """Every quantization wrapper of ``model`` (nested models included), in model order."""
    return [layer for layer in _walk(model) if isinstance(layer, _QuantWrapper)]


def _select(layer, targets: str, min_size: float) -> List[str]:
    trainable = layer.trainable_weights
    chosen = []
    for path, variable in weight_paths(layer).items():
        if not any(variable is v for v in trainable):
            continue
        if targets == "kernels" and path.split(".")[-1] not in KERNEL_ATTRS:
            continue
        if 4 * int(np.prod(variable.shape)) < min_size * 2 ** 20:
            continue  # as the reference: tensors under min_size megabytes (float32) stay float32
        chosen.append(path)
    return chosen


def _wrap_model(model, make: Callable, targets: str, min_size: float, exclude: Sequence[str], what: str):
    if targets not in TARGET_MODES:
        raise ValueError(f"`targets` must be one of {TARGET_MODES}. Received: targets={targets!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, float)) or min_size < 0:
        raise ValueError(f"`min_size` must be a number of megabytes >= 0. Received: min_size={min_size!r}")
    if isinstance(exclude, str):
        raise TypeError(f"`exclude` must be a list of layer names. Received: exclude={exclude!r}")
    model = ensure_tf_keras_model(model, "model")
    names = {layer.name for layer in _walk(model)} | {m.name for m in model.layers}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise ValueError(f"`exclude` names layers that are not in the model: {unknown}. Layers: {sorted(names)}")
    if diffq_layers(model):
        raise ValueError("`model` already has quantization wrappers; apply DiffQ to the float model. Received: "
                         f"model with {[w.name for w in diffq_layers(model)]}")
    plan: Dict[str, List[str]] = {}

    def make_plan(container):
        for layer in container.layers:
            if layer.name in exclude:
                continue  # an excluded nested model keeps all of its layers
            if isinstance(layer, keras.Model):
                make_plan(layer)
                continue
            paths = _select(layer, targets, min_size)
            if paths:
                plan[layer.name] = paths

    make_plan(model)
    if not plan:
        raise ValueError(f"no weight of `model` qualifies for {what} (targets={targets!r}, min_size={min_size} MB, "
                         f"exclude={list(exclude)}). Use min_size=0 for small models or targets='all'.")

    def clone(source):
        def clone_layer(layer):
            if isinstance(layer, keras.Model):
                return clone(layer)
            copy = layer.__class__.from_config(layer.get_config())
            return make(copy, plan[layer.name]) if layer.name in plan else copy

        if not is_graph_model(source):
            raise ValueError(f"{what} needs a Sequential or functional model: {source.name!r} is subclassed "
                             f"({type(source).__name__}) and cannot be cloned; wrap its layers with the wrapper "
                             f"classes directly. Received: model={source!r}")
        new = keras.models.clone_model(source, clone_function=clone_layer)
        for layer in source.layers:
            if isinstance(layer, keras.Model) or not layer.weights:
                continue
            target = new.get_layer(layer.name)
            (target.layer if isinstance(target, _QuantWrapper) else target).set_weights(layer.get_weights())
        return new

    return clone(model)


def apply_diffq(model: keras.Model, *, group_size: int = 8, min_bits: float = 2, max_bits: float = 15,
                init_bits: float = 8, noise: str = "gaussian", grid: str = "range", penalty: float = 0.0,
                min_size: float = 0.01,
                targets: str = "kernels", exclude: Sequence[str] = ()) -> keras.Model:
    """Copy of ``model`` whose chosen weights train with DiffQ (weights kept; the original is not modified).

    Args:
        model: a built tf_keras Sequential or functional model (nested models are handled).
        group_size: weights per learned bits value (reference default 8; its examples use 16).
        min_bits, max_bits, init_bits: bits range and start (defaults 2, 15, 8 as the reference).
        noise: "gaussian" (reference default) or "uniform" (the paper).
        grid: "range" (true-quantization levels min + k * Delta, the reference's) or "zero" (levels shifted so
            that 0 is one, same storage).
        penalty: size penalty per megabyte, added to the loss through ``model.losses``.
        min_size: tensors smaller than this many float32 megabytes stay float (reference 0.01; 0 for tiny models).
        targets: "kernels" (kernel, depthwise/pointwise kernel, embeddings, recurrent kernel) or "all" (every
            trainable weight, biases and normalization parameters included).
        exclude: names of layers to leave as they are.

    Returns:
        The DiffQ model, uncompiled: compile it with :class:`DiffQOptimizer` to give the bits their own Adam.
    """
    def make(layer, paths):
        return DiffQWrapper(layer, targets=paths, group_size=group_size, min_bits=min_bits, max_bits=max_bits,
                            init_bits=init_bits, noise=noise, grid=grid, penalty=penalty, name=layer.name)

    make(keras.layers.Dense(1), None)  # validates the arguments before any cloning
    return _wrap_model(model, make, targets, min_size, exclude, "DiffQ")


def apply_uniform(model: keras.Model, bits: int, *, min_size: float = 0.01, targets: str = "kernels",
                  exclude: Sequence[str] = ()) -> keras.Model:
    """Copy of ``model`` with uniform per-tensor quantization at ``bits``: train it for QAT, evaluate it for PTQ."""
    def make(layer, paths):
        return UniformQuantWrapper(layer, targets=paths, bits=bits, name=layer.name)

    make(keras.layers.Dense(1), None)
    return _wrap_model(model, make, targets, min_size, exclude, "uniform quantization")


def _diffq_only(model, arg_name="model") -> List[DiffQWrapper]:
    if not isinstance(model, keras.Model):
        raise TypeError(f"`{arg_name}` must be a tf_keras Model. Received: {arg_name}={model!r}")
    wrappers = [w for w in diffq_layers(model) if isinstance(w, DiffQWrapper)]
    if not wrappers:
        raise ValueError(f"`{arg_name}` has no DiffQ layer; create one with apply_diffq(). "
                         f"Received: {arg_name}={model.name!r}")
    return wrappers


def set_penalty(model: keras.Model, penalty: float) -> None:
    """Sets the size penalty (per megabyte) of every DiffQ layer; takes effect at the next step, no recompile."""
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or penalty < 0:
        raise ValueError(f"`penalty` must be a number >= 0. Received: penalty={penalty!r}")
    for wrapper in _diffq_only(model):
        wrapper.penalty = float(penalty)
        wrapper.penalty_weight.assign(float(penalty))


def freeze_bits(model: keras.Model, frozen: bool = True) -> Dict[str, np.ndarray]:
    """Fixes every DiffQ layer's bits at their rounded values and trains the weights on that true grid.

    The second phase of a DiffQ fine-tune: DiffQ's noise learns how many bits each group needs, but the noise is
    not the rounding the model meets at inference. After ``freeze_bits(qmodel)``, training runs the true
    quantization forward with a straight-through gradient to the weights (quantization-aware training at the
    learned, mixed widths); the bits logits get no gradient, so the size (:func:`true_size`) no longer changes.
    Call ``compile`` again after it (the training step is traced anew). ``frozen=False`` returns to the noise.

    Returns the frozen bits, as :func:`learned_bits`.
    """
    if not isinstance(frozen, bool):
        raise TypeError(f"`frozen` must be True or False. Received: frozen={frozen!r}")
    for wrapper in _diffq_only(model):
        wrapper.frozen = frozen
    model.train_function = None  # the flag is read when the training step is traced
    return learned_bits(model)


def size_report(model: keras.Model) -> SizeReport:
    """Per-tensor storage: DiffQ/uniform weights packed with rounded bits, everything else float32."""
    return model_size(model)


def true_size(model: keras.Model) -> int:
    """Bytes of the packed model: codes at rounded bits, bits fields, ranges, headers, float32 rest.

    Equals the payload of :func:`tfq_ext.diffq.export_packed` byte for byte.
    """
    return model_size(model).bytes


def estimated_size(model: keras.Model) -> float:
    """The differentiable size estimate in bytes (real-valued bits, no padding), float32 rest included."""
    total = float(true_size(model))
    for wrapper in _diffq_only(model):
        for path in wrapper.targets:
            exact = wrapper._target_size(path, wrapper._variable(path)).bytes
            total += float(ops.size_bits(wrapper.bits(path), wrapper.group_size)) / 8.0 - exact
    return total


def learned_bits(model: keras.Model) -> Dict[str, np.ndarray]:
    """"layer/weight" -> integer bits per group that true quantization uses, for every DiffQ target."""
    return {f"{w.layer.name}/{path}": bits for w in _diffq_only(model) for path, bits in w.rounded_bits().items()}


def mean_bits(model: keras.Model) -> float:
    """Average rounded bits per quantized weight (groups weighted by their size)."""
    per = learned_bits(model)
    return float(sum(b.sum() for b in per.values()) / sum(b.size for b in per.values()))


def to_dense_model(model: keras.Model) -> keras.Model:
    """Plain copy of ``model``: each wrapper becomes its layer holding the truly quantized weights.

    Its outputs equal the DiffQ model's inference outputs; export it with ``tflite_export.convert``.
    """
    model = ensure_tf_keras_model(model, "model")
    if not diffq_layers(model):
        raise ValueError(f"`model` has no quantization wrapper to unwrap. Received: model={model.name!r}")
    values = {}

    def clone(source):
        def clone_layer(layer):
            if isinstance(layer, keras.Model):
                return clone(layer)
            if isinstance(layer, _QuantWrapper):
                quantized = {id(layer._variable(p)): q.numpy()
                             for p, q in layer.quantized_weights(training=False).items()}
                values[layer.name] = [quantized[id(v)] if id(v) in quantized else v.numpy()
                                      for v in layer.layer.weights]
                return layer.layer.__class__.from_config(layer.layer.get_config())
            return layer.__class__.from_config(layer.get_config())

        new = keras.models.clone_model(source, clone_function=clone_layer)
        for layer in source.layers:
            if isinstance(layer, keras.Model) or not layer.weights:
                continue
            target = new.get_layer(layer.name)
            target.set_weights(values[layer.name] if layer.name in values else layer.get_weights())
        return new

    return clone(model)


def export_tflite(model: keras.Model, representative_data, *, per_channel: bool | None = None,
                  compressed: bool = False, **kwargs) -> bytes:
    """Full-int8 TFLite flatbuffer of the quantized model (all learned bits must be <= 8).

    The dense model's weights are the DiffQ grid values; the converter then re-quantizes them to int8 with a
    symmetric scale per channel (or per tensor), which moves each weight by at most half an int8 step.

    With ``compressed=True`` the file is ``tflite_export.compress``-ed: each group keeps its learned width in
    the file (variable-width codes, loader layout), so its size follows :func:`true_size`. That needs one
    int8 scale per tensor (``per_channel`` defaults to False then; per-channel scales give every output channel
    its own grid). ``per_channel`` defaults to True otherwise.
    """
    if not isinstance(compressed, bool):
        raise TypeError(f"`compressed` must be True or False. Received: compressed={compressed!r}")
    if compressed and per_channel:
        raise ValueError("`compressed=True` needs per-tensor weights: per-channel scales give each output channel "
                         "its own int8 grid, and the groups no longer share code tables. Received: "
                         "per_channel=True")
    per_channel = not compressed if per_channel is None else per_channel
    too_wide = {name: int(b.max()) for name, b in learned_bits(model).items() if b.max() > 8} \
        if any(isinstance(w, DiffQWrapper) for w in diffq_layers(model)) else {}
    too_wide.update({f"{w.layer.name}": w.bits for w in diffq_layers(model)
                     if isinstance(w, UniformQuantWrapper) and w.bits > 8})
    if too_wide:
        raise ValueError(f"full-int8 export needs every group at <= 8 bits; these weights use more: {too_wide}. "
                         f"Raise the size penalty, lower max_bits, or ship the packed export instead.")
    import tflite_export  # the deployment package; imported here so that training never needs it

    flatbuffer = tflite_export.convert(to_dense_model(model), representative_data, per_channel=per_channel, **kwargs)
    return tflite_export.compress(flatbuffer) if compressed else flatbuffer

