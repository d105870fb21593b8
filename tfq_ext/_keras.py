"""The single place that chooses Keras.

tensorflow-model-optimization and tensorflow-gnn support only the Keras 2 API, which TensorFlow 2.21 ships as
the separate ``tf_keras`` package. ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first imported so
that ``tf.keras`` inside those libraries also resolves to ``tf_keras``. Every other module of the project does
``from tfq_ext._keras import keras``.
"""

from __future__ import annotations

import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    # TensorFlow already chose Keras 3 for tf.keras; tf_keras itself still works, but tf-gnn and tfmot that
    # reach Keras through tf.keras would not. Say so instead of failing later with an obscure error.
    import warnings

    warnings.warn(
        "tfq_ext was imported after TensorFlow without TF_USE_LEGACY_KERAS=1; tf.keras resolves to Keras 3 in "
        "this process. Import tfq_ext first or export TF_USE_LEGACY_KERAS=1 before starting Python.",
        RuntimeWarning,
        stacklevel=2,
    )
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["keras", "tf", "ensure_tf_keras_model", "is_keras3_object"]


def is_keras3_object(obj: object) -> bool:
    """True for objects of the Keras 3 package (``import keras``), which tf_keras entry points cannot take."""
    module = type(obj).__module__ or ""
    return module == "keras" or module.startswith("keras.")


def _convert_keras3_model(model: object) -> "keras.Model":
    """Rebuilds a Keras 3 Sequential model of built-in layers with tf_keras, copying its weights."""
    import keras as keras3  # only reached when the user already imported Keras 3

    if not isinstance(model, keras3.Sequential):
        raise TypeError("only Sequential Keras 3 models are converted automatically")
    layers = []
    for layer in model.layers:
        cls = getattr(keras.layers, type(layer).__name__, None)
        if cls is None:
            raise TypeError(f"layer {layer.name!r} of class {type(layer).__name__} has no tf_keras equivalent")
        config = dict(layer.get_config())
        dtype = config.get("dtype")
        if isinstance(dtype, dict):  # Keras 3 serialises the dtype policy as an object
            config["dtype"] = dtype.get("config", {}).get("name", "float32")
        for key in ("kernel_initializer", "bias_initializer", "gamma_initializer", "beta_initializer",
                    "moving_mean_initializer", "moving_variance_initializer", "depthwise_initializer",
                    "pointwise_initializer", "embeddings_initializer", "kernel_regularizer", "bias_regularizer",
                    "activity_regularizer", "kernel_constraint", "bias_constraint", "depthwise_regularizer",
                    "pointwise_regularizer", "depthwise_constraint", "pointwise_constraint",
                    "gamma_regularizer", "beta_regularizer", "gamma_constraint", "beta_constraint",
                    "embeddings_regularizer", "embeddings_constraint"):
            config.pop(key, None)  # weights are copied; Keras 3 initializer configs do not deserialise
        config.pop("synchronized", None)
        config.pop("quantization_config", None)
        try:
            layers.append(cls.from_config(config))
        except Exception as exc:  # noqa: BLE001 - reported with the layer name below
            raise TypeError(f"layer {layer.name!r} ({type(layer).__name__}) could not be rebuilt: {exc}") from exc
    new = keras.Sequential(layers, name=model.name)
    new.build((None,) + tuple(model.inputs[0].shape[1:]))
    for src, dst in zip(model.layers, new.layers):
        dst.set_weights([w.numpy() if hasattr(w, "numpy") else w for w in src.get_weights()])
    return new


def ensure_tf_keras_model(model: object, arg_name: str = "model") -> "keras.Model":
    """Returns ``model`` as a built tf_keras model, or raises a clear error.

    A Keras 3 Sequential model of built-in layers is rebuilt with tf_keras from its config and weights (the
    original is not modified); any other Keras 3 model gets an error that says how to rebuild it.
    """
    if is_keras3_object(model):
        built = bool(getattr(model, "built", False)) and getattr(model, "inputs", None)
        if not built:
            raise ValueError(
                f"`{arg_name}` is an unbuilt Keras 3 model. Build it (give it an Input) or rebuild it with "
                f"tf_keras. Received: {arg_name}={model!r}"
            )
        try:
            return _convert_keras3_model(model)
        except TypeError as exc:
            raise TypeError(
                f"`{arg_name}` is a Keras 3 model (`import keras`), but tfq_ext works on the Keras 2 API "
                f"(tf_keras), which tfmot and tf-gnn require. Automatic conversion failed: {exc}. Rebuild the "
                f"model with `import tf_keras as keras` (or `from tfq_ext._keras import keras`) and copy the "
                f"weights with `new.set_weights(old.get_weights())`. Received: {arg_name}={model!r}"
            ) from None
    if not isinstance(model, keras.Model):
        raise TypeError(f"`{arg_name}` must be a tf_keras Model. Received: {arg_name}={model!r} "
                        f"(type {type(model).__name__})")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"`{arg_name}` is not built: it has no defined inputs. Build it first, e.g. start a Sequential "
            f"model with `keras.Input(shape)` or call `model.build(input_shape)`. Received: {arg_name}={model!r}"
        )
    return model
