"""Model size accounting: ``model_size(model)`` and a per-layer summary table with bits and bytes columns.

Layers that know their compressed storage (PQ, KQ, ...) describe it through ``size_entries()``; every other
weight counts at ``default_bits`` (32 for float models, 8 for an int8 export).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from tfq_ext._keras import keras
from tfq_ext.ops.size import SizeReport, TensorSize

__all__ = ["model_size", "size_summary"]


def _layers(model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def model_size(model: keras.Model, default_bits: int = 32) -> SizeReport:
    """Storage of every weight of ``model`` (indices, codebooks and plain parameters).

    Args:
        model: a built Keras model.
        default_bits: width of parameters stored plainly (32: float32; 8: int8 export).
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"`model` must be a built tf_keras Model. Received: model={model!r}")
    if default_bits not in (8, 16, 32):
        raise ValueError(f"`default_bits` must be 8, 16 or 32. Received: default_bits={default_bits}")
    report = SizeReport()
    for layer in _layers(model):
        if hasattr(layer, "size_entries"):
            report.tensors.extend(layer.size_entries())
            continue
        for weight in layer.weights:
            if weight.dtype.is_integer and "step" in weight.name:
                continue  # bookkeeping counters, not model parameters
            params = int(np.prod(weight.shape))
            name = weight.name.split("/")[-1].split(":")[0]
            report.tensors.append(TensorSize(layer.name, name, params, f"float{default_bits}" if default_bits > 8
                                             else "int8", other_bytes=params * default_bits // 8))
    return report


def size_summary(model: keras.Model, default_bits: int = 32, print_fn=print) -> SizeReport:
    """Prints a ``model.summary()``-like table with bits per weight and bytes; returns the report."""
    report = model_size(model, default_bits)
    print_fn(str(report))
    return report
