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
    """True for objects of the Keras 3 package (``import keras``), which tf_keras entry points cannot take.

    Instances of user subclasses of Keras 3 classes (a subclassed ``keras.Model``) count too: their own class
    lives in the user's module, so the whole MRO is checked.
    """
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        if module == "keras" or module.startswith("keras."):
            return True
    return False


def ensure_tf_keras_model(model: object, arg_name: str = "model") -> "keras.Model":
    """Returns ``model`` as a built tf_keras model, or raises a clear error.

    A built Keras 3 Sequential or functional model (nested models included) of built-in layers is rebuilt with
    tf_keras from its config and weights by ``tfq_ext._keras3.convert_keras3_model`` (the original is not
    modified); any other Keras 3 model gets an error that says how to rebuild it.
    """
    if is_keras3_object(model):
        from tfq_ext import _keras3  # imports Keras 3, which only users who already use it have loaded

        if _keras3.is_keras3_graph_model(model):
            built = bool(getattr(model, "built", False)) and getattr(model, "inputs", None)
            if not built:
                raise ValueError(
                    f"`{arg_name}` is an unbuilt Keras 3 model. Build it (give it an Input) or rebuild it with "
                    f"tf_keras. Received: {arg_name}={model!r}"
                )
        try:
            return _keras3.convert_keras3_model(model)
        except TypeError as exc:
            raise TypeError(
                f"`{arg_name}` comes from Keras 3 (`import keras`), but tfq_ext works on the Keras 2 API "
                f"(tf_keras), which tfmot and tf-gnn require. Automatic conversion failed: {exc} Received: "
                f"{arg_name}={model!r}"
            ) from None
    if not isinstance(model, keras.Model):
        raise TypeError(f"`{arg_name}` must be a tf_keras Model. Received: {arg_name}={model!r} "
                        f"(type {type(model).__name__})")
    from tfq_ext._compat import is_graph_model

    if model.built and not is_graph_model(model) and not getattr(model, "inputs", None):
        raise ValueError(
            f"`{arg_name}` is a subclassed model ({type(model).__name__}): `build()` gives it weights but no "
            f"symbolic inputs, so its input shape is unknown here. Call it on a `keras.Input` inside a functional "
            f"model, `inputs = keras.Input(shape); wrapped = keras.Model(inputs, {arg_name}(inputs))`, and pass "
            f"`wrapped` (TFLite conversion works on that; quantization-aware training needs the layers themselves "
            f"in a functional or Sequential graph). Received: {arg_name}={model!r}")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"`{arg_name}` is not built: it has no defined inputs. Build it first, e.g. start a Sequential "
            f"model with `keras.Input(shape)` or call `model.build(input_shape)`. Received: {arg_name}={model!r}"
        )
    return model
