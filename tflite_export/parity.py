"""Layer-by-layer agreement between a QAT Keras model and its int8 TFLite file: ``layer_parity``.

Comparing logits hides where a difference starts, and on deep networks it mostly measures how rounding
differences of one step grow through the layers. This module reads every intermediate int8 tensor (TFLite's
builtin kernels with ``experimental_preserve_all_tensors``; XNNPACK keeps its intermediates to itself) and, per
Keras layer, compares the layer's output in steps of that tensor's scale in two ways:

- ``local``: the Keras layer applied to TFLite's own (dequantized) inputs of that layer, so each layer is judged
  on its own arithmetic: a correct simulation is within one step (rounding of the fixed-point multiplier);
- ``end_to_end``: the Keras model's output of that layer on the original input (accumulated differences).

Keras layers are matched to TFLite tensors by name: the converter names a tensor after the ops it came from,
``<model>/<layer>/<op>``, joined with ``;`` when ops were fused; the first one names the producing layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["LayerParity", "layer_parity"]

# Layers that are the identity at inference and leave no op in the file: a reader looks through them.
_IDENTITY_AT_INFERENCE = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianDropout", "GaussianNoise",
                          "AlphaDropout", "StochasticDepth", "ActivityRegularization"}


@dataclasses.dataclass
class LayerParity:
    """Agreement of one Keras layer with its TFLite tensor, in steps of that tensor's scale.

    Attributes:
        layer: Keras layer name.
        tensor: TFLite tensor name.
        local_within_1: fraction of values within one step when fed TFLite's inputs (None if not computed).
        local_max: largest local difference in steps.
        end_to_end_within_1: fraction within one step on the model's own input.
        end_to_end_max: largest end-to-end difference in steps.
    """

    layer: str
    tensor: str
    local_within_1: float | None
    local_max: float | None
    end_to_end_within_1: float
    end_to_end_max: float


def _inbound(layer) -> list:
    node = layer.inbound_nodes[0]
    parents = node.inbound_layers
    return list(parents) if isinstance(parents, (list, tuple)) else [parents]


def _layer_of(name: str, prefix: str, names: list[str]) -> str | None:
    first = name.split(";")[0]
    if not first.startswith(prefix):
        return None
    rest = first[len(prefix):]
    return next((n for n in names if rest.startswith(n + "/")), None)


def _tensor_for_layers(model, details: dict, ops: list[dict], outputs: set[int]) -> dict[str, int]:
    """Keras layer name -> its output tensor: the first tensor (in execution order) written by the layer's ops
    that an op of another layer reads or that is a graph output. A layer of several ops (a quantized layer
    normalization) writes intermediates that only its own ops read."""
    names = sorted((layer.name for layer in model.layers), key=len, reverse=True)
    prefix = f"{model.name}/"
    owner = {int(t): _layer_of(details[int(t)]["name"], prefix, names)
             for op in ops for t in op["outputs"] if t >= 0}
    readers: dict[int, set] = {}
    for op in ops:
        layer = owner.get(int(op["outputs"][0])) if len(op["outputs"]) else None
        for t in op["inputs"]:
            readers.setdefault(int(t), set()).add(layer)
    found: dict[str, int] = {}
    for op in ops:
        for t in (int(t) for t in op["outputs"] if t >= 0):
            layer = owner.get(t)
            if layer is None or layer in found:
                continue
            if t in outputs or readers.get(t, set()) - {layer}:
                found[layer] = t
    return found


def _apply(layer, inputs: list):
    """The layer's inference output on numpy inputs, or None when an input is unknown or the call fails."""
    if not inputs or any(v is None for v in inputs):
        return None
    try:
        return np.asarray(layer(inputs if len(inputs) > 1 else inputs[0], training=False))
    except (ValueError, TypeError):  # e.g. a layer whose call needs more than its inbound tensors
        return None


def layer_parity(model: Any, flatbuffer: bytes, x: np.ndarray, max_samples: int = 8) -> list[LayerParity]:
    """Compares every Keras layer that has a TFLite tensor with it (see the module docstring).

    Args:
        model: The QAT (or float) tf_keras model the file was converted from; single input.
        flatbuffer: Its int8 TFLite file (int8 input).
        x: Float input samples, batch axis first.
        max_samples: At most this many samples are compared.

    Returns:
        One :class:`LayerParity` per matched layer, in the model's layer order.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from tfq_ext._keras import keras
    from tflite_export._graph import check_flatbuffer

    content = check_flatbuffer(flatbuffer, "flatbuffer")
    x = np.asarray(x, np.float32)[:max_samples]
    interpreter = Interpreter(model_content=content,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                              experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    (input_detail,) = interpreter.get_input_details()
    outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    tensors = _tensor_for_layers(model, details, interpreter._get_ops_details(), outputs)
    for layer in model.layers:  # the model input is the file's input (it carries the input quantizer's scale)
        if type(layer).__name__ == "QuantizeInput" or isinstance(layer, keras.layers.InputLayer):
            tensors.setdefault(layer.name, int(input_detail["index"]))
    layers = [layer for layer in model.layers if layer.name in tensors
              and not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    keras_outputs = probe.predict(x, verbose=0)
    if len(layers) == 1:
        keras_outputs = [keras_outputs]


    scale_in, zero_in = input_detail["quantization"]
    local: dict[str, list] = {layer.name: [] for layer in layers}
    end: dict[str, list] = {layer.name: [] for layer in layers}
    for n in range(len(x)):
        interpreter.set_tensor(input_detail["index"],
                               np.clip(np.round(x[n:n + 1] / scale_in + zero_in), -128, 127).astype(np.int8))
        interpreter.invoke()

        memo: dict[str, Any] = {}

        def value(layer, depth=0):
            """TFLite's value of a layer's output; a layer without its own tensor (an Add whose ReLU TFLite
            fused, an identity) is computed by Keras from its inputs' TFLite values."""
            if layer.name in memo:
                return memo[layer.name]
            if layer.name in tensors:
                index = tensors[layer.name]
                scale, zero = details[index]["quantization"]
                result = (interpreter.get_tensor(index).astype(np.float32) - zero) * scale
            elif depth > 8 or isinstance(layer, keras.layers.InputLayer):
                result = None
            elif type(layer).__name__ in _IDENTITY_AT_INFERENCE:
                result = value(_inbound(layer)[0], depth + 1)
            else:
                result = _apply(layer, [value(p, depth + 1) for p in _inbound(layer)])
            memo[layer.name] = result
            return result

        for layer, keras_out in zip(layers, keras_outputs):
            index = tensors[layer.name]
            scale, zero = details[index]["quantization"]
            tflite = interpreter.get_tensor(index).astype(np.float32)
            if scale == 0 or tflite.shape[1:] != keras_out.shape[1:]:
                continue
            end[layer.name].append(np.abs(keras_out[n:n + 1] / scale + zero - tflite))
            if index == input_detail["index"]:
                continue
            out = _apply(layer, [value(p) for p in _inbound(layer)])
            if out is not None and out.shape == tflite.shape:
                local[layer.name].append(np.abs(out / scale + zero - tflite))
    results = []
    for layer in layers:
        if not end[layer.name]:
            continue
        e = np.concatenate([a.ravel() for a in end[layer.name]]) - 1e-3  # float32 noise of dequantization
        loc = np.concatenate([a.ravel() for a in local[layer.name]]) - 1e-3 if local[layer.name] else None
        results.append(LayerParity(
            layer=layer.name, tensor=details[tensors[layer.name]]["name"],
            local_within_1=None if loc is None else float(np.mean(loc <= 1.0)),
            local_max=None if loc is None else float(max(loc.max(), 0.0)),
            end_to_end_within_1=float(np.mean(e <= 1.0)), end_to_end_max=float(max(e.max(), 0.0))))
    return results
