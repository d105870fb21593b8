"""Copying a Keras model with some layers swapped for others: shared by the methods that replace layers
(Quant-Noise/iPQ, KQ), which may not import each other."""

from __future__ import annotations

from typing import Callable, Optional

from tfq_ext._keras import keras

__all__ = ["replace_layers"]


def replace_layers(model: keras.Model, replace: Callable[[keras.layers.Layer], Optional[keras.layers.Layer]]
                   ) -> keras.Model:
    """Clone of ``model`` where ``replace(layer)`` returns a substitute layer, or None to keep a copy.

    Kept layers get the original weights; substitutes are returned unbuilt-then-built by the clone and are the
    caller. The original model is not modified.
    """
    substituted = set()

    def clone(layer):
        new = replace(layer)
        if new is None:
            return layer.__class__.from_config(layer.get_config())
        substituted.add(layer.name)
        return new

    new_model = keras.models.clone_model(model, clone_function=clone)
    for old, new in zip(model.layers, new_model.layers):
        if old.name not in substituted and old.weights:
            new.set_weights(old.get_weights())
    return new_model
