"""The one place this package reaches into a non-public TensorFlow module.

Custom TFLite kernels built against ``libtensorflow_cc.so.2`` register themselves on TensorFlow's own
``tflite::MutableOpResolver``; only TensorFlow's ``InterpreterWithCustomOps`` hands them that resolver, and
TensorFlow exports it under no public name. ai_edge_litert ships a class of the same name, but its resolver
lives in a different shared library, so a kernel linked against TensorFlow cannot register on it.
"""

from __future__ import annotations

__all__ = ["tf_interpreter_with_custom_ops"]


def tf_interpreter_with_custom_ops() -> type:
    """Returns TensorFlow's ``InterpreterWithCustomOps`` class (imported lazily: it loads TensorFlow)."""
    from tfq_ext._keras import tf  # noqa: F401  - TensorFlow must be imported with the project's Keras choice
    from tensorflow.lite.python.interpreter import InterpreterWithCustomOps

    return InterpreterWithCustomOps
