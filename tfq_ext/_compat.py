"""The one place for helpers that paper over framework internals (no private imports elsewhere)."""

from __future__ import annotations

from tfq_ext._keras import keras, tf

__all__ = ["is_graph_model", "smart_cond", "resolve_training", "skips_first_node", "tf_interpreter_with_custom_ops",
           "tflite_schema", "freeze_concrete_function", "tf_keras_convnext_layers"]


def smart_cond(pred, true_fn, false_fn):
    """``true_fn()`` or ``false_fn()`` for a Python or constant predicate, else a ``tf.cond``."""
    if isinstance(pred, bool):
        return true_fn() if pred else false_fn()
    static = tf.get_static_value(pred)
    if static is not None:
        return true_fn() if bool(static) else false_fn()
    return tf.cond(tf.cast(pred, tf.bool), true_fn, false_fn)


def resolve_training(training):
    """Keras' convention: ``training=None`` means the global learning phase."""
    return keras.backend.learning_phase() if training is None else training


def is_graph_model(model) -> bool:
    """True for a tf_keras Sequential or functional model, whose layer graph is its computation (not a
    subclassed model, whose ``call`` is Python code); tf_keras marks those with ``_is_graph_network``."""
    return isinstance(model, keras.Sequential) or bool(getattr(model, "_is_graph_network", False))


def skips_first_node(model) -> bool:
    """Whether tf_keras' functional config numbers a nested model's calls from 1 instead of 0.

    A model built from ``Input`` layers owns an inbound node of its own (index 0) that the enclosing model's
    config does not list; this mirrors tf_keras' own rule (``functional._should_skip_first_node``).
    """
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        return False
    tracked = getattr(model, "_self_tracked_trackables", None)
    if tracked:
        return isinstance(tracked[0], keras.layers.InputLayer)
    return True


def tf_interpreter_with_custom_ops() -> type:
    """TensorFlow's ``InterpreterWithCustomOps`` class, which TensorFlow exports under no public name.

    Custom TFLite kernels built against ``libtensorflow_cc.so.2`` register on TensorFlow's own
    ``tflite::MutableOpResolver``; ai_edge_litert ships a class of the same name whose resolver lives in a
    different shared library, so a kernel linked against TensorFlow cannot register there.
    """
    from tensorflow.lite.python.interpreter import InterpreterWithCustomOps

    return InterpreterWithCustomOps


def tflite_schema():
    """TensorFlow's generated Python object API of the TFLite flatbuffer schema (``ModelT``, ``TensorT``, ...).

    TensorFlow ships it as ``tensorflow.lite.python.schema_py_generated`` without a public name; it is the
    writer TensorFlow's own converter uses to edit flatbuffers (``modify_model_io_type``), so a file read and
    written back with it keeps its bytes (measured with TF 2.21).
    """
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def tf_keras_convnext_layers() -> dict:
    """tf_keras' ConvNeXt ``LayerScale`` and ``StochasticDepth`` layer classes, exported under no public name.

    Keras 3's ConvNeXt uses layers of the same names and math; the Keras 3 converter (``tfq_ext._keras3``)
    rebuilds them as these, so that a converted ConvNeXt is the one tf_keras would have built.
    """
    from tf_keras.src.applications import convnext

    return {"LayerScale": convnext.LayerScale, "StochasticDepth": convnext.StochasticDepth}


def freeze_concrete_function(function):
    """``function`` with its captured variables replaced by constants (TensorFlow's own freezing, which its
    converter runs too, but only after saving the whole Keras model as a SavedModel; doing it first avoids
    that save)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(function)
