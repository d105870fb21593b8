"""The tables of ``tfq_ext._keras3``: Keras 3 activations and ``keras.ops`` operations as tf_keras code.

Activations with the same name and math map by name; those tf_keras lacks or computes differently (Keras 3's
``hard_sigmoid`` is relu6(x + 3) / 6, tf_keras' clip(0.2 x + 0.5, 0, 1)) become standard layers and ops applied
to tf_keras tensors, the way tf_keras' own applications write them. Operations become the same Python operator or
TensorFlow function, which tf_keras records as ``TFOpLambda`` layers.
"""

from __future__ import annotations

import operator
from typing import Callable

from tfq_ext._keras import keras, tf

__all__ = ["OPS", "activation"]


# ----------------------------------------------------------------------------------------------- activations
def _hard_sigmoid(x, name):
    # tf_keras' own MobileNetV3 writes hard sigmoid exactly like this; Keras 3 computes relu6(x + 3) / 6.
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x + 3.0) * (1.0 / 6.0)


def _hard_silu(x, name):
    return keras.layers.Multiply(name=name)([x, _hard_sigmoid(x, f"{name}_sigmoid")])


# Keras 3 serialises activations by function name. Same name and same math in tf_keras:
_SAME_ACTIVATIONS = {name: name for name in ("relu", "elu", "selu", "softplus", "softsign", "tanh", "sigmoid",
                                               "exponential", "linear", "softmax", "mish", "gelu", "swish")}
_SAME_ACTIVATIONS["silu"] = "swish"  # both are tf.nn.silu
# Missing from tf_keras or different there: rebuilt as layers/ops, ``fn(x, name)``; the last layer takes ``name``.
_EXPANDED_ACTIVATIONS: dict[str, Callable] = {
    "relu6": lambda x, name: keras.layers.ReLU(6.0, name=name)(x),
    "leaky_relu": lambda x, name: keras.layers.LeakyReLU(alpha=0.2, name=name)(x),  # Keras 3 default slope
    "hard_sigmoid": _hard_sigmoid, "hard_silu": _hard_silu, "hard_swish": _hard_silu,
    "hard_tanh": lambda x, name: tf.clip_by_value(x, -1.0, 1.0),
    "log_softmax": lambda x, name: tf.nn.log_softmax(x, axis=-1), "log_sigmoid": lambda x, name: tf.math.log_sigmoid(x),
    "tanh_shrink": lambda x, name: x - tf.math.tanh(x),
    "celu": lambda x, name: tf.maximum(x, 0.0) + tf.math.expm1(tf.minimum(x, 0.0))}
# Layers whose activation is applied last to their output, so that it can move out into an expansion.
_OUTPUT_ACTIVATION_LAYERS = {"Activation", "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
                             "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D",
                             "SeparableConv1D", "SeparableConv2D"}


def activation(value, key: str, class_name: str, where: str):
    """(tf_keras activation name, expansion or None) for a Keras 3 activation config entry."""
    if value is None or (isinstance(value, str) and value in _SAME_ACTIVATIONS):
        return _SAME_ACTIVATIONS.get(value, value), None
    if isinstance(value, str) and value in _EXPANDED_ACTIVATIONS:
        if key == "activation" and class_name in _OUTPUT_ACTIVATION_LAYERS:
            return "linear", _EXPANDED_ACTIVATIONS[value]
        raise TypeError(f"{where} uses the Keras 3 activation `{key}={value!r}`, which tf_keras lacks or computes "
                        f"differently, inside a {class_name} where it cannot be rebuilt as separate layers.")
    raise TypeError(f"{where} uses the activation `{key}={value!r}`, which has no tf_keras equivalent. Supported: "
                    f"{sorted(_SAME_ACTIVATIONS) + sorted(_EXPANDED_ACTIVATIONS)}.")


# ----------------------------------------------------------------------------------------------- operations
def _reduce(fn):
    return lambda x, axis=None, keepdims=False: fn(x, axis=axis, keepdims=keepdims)


def _elu(x, alpha=1.0):
    return tf.nn.elu(x) if alpha == 1.0 else tf.where(x > 0, tf.nn.elu(x), alpha * tf.nn.elu(x))


def _where(condition, x1=None, x2=None):
    if x1 is None or x2 is None:  # the one-argument form returns indices, in another layout than tf.where's
        raise TypeError("the one-argument form of the Keras 3 operation `where` has no tf_keras equivalent.")
    return tf.where(condition, x1, x2)


_AXIS, _REDUCE = ("axis",), ("axis", "keepdims")
# Keras 3 operation class name -> (tf_keras-side function, config entries it takes).
OPS: dict[str, tuple[Callable, tuple[str, ...]]] = {
        "Add": (operator.add, ()), "Subtract": (operator.sub, ()), "Multiply": (operator.mul, ()),
        "Divide": (operator.truediv, ()), "TrueDivide": (operator.truediv, ()), "Power": (operator.pow, ()),
        "FloorDivide": (tf.math.floordiv, ()), "Maximum": (tf.maximum, ()), "Minimum": (tf.minimum, ()),
        "Negative": (operator.neg, ()), "Absolute": (tf.abs, ()), "Sqrt": (tf.sqrt, ()), "Square": (tf.square, ()),
        "Exp": (tf.exp, ()), "Log": (tf.math.log, ()), "Tanh": (tf.tanh, ()), "Sigmoid": (tf.sigmoid, ()),
        "Relu": (tf.nn.relu, ()), "Relu6": (tf.nn.relu6, ()), "Silu": (tf.nn.silu, ()),
        "Softplus": (tf.math.softplus, ()), "Matmul": (tf.linalg.matmul, ()), "Where": (_where, ()),
        "Greater": (operator.gt, ()), "Less": (operator.lt, ()), "GreaterEqual": (operator.ge, ()),
        "LessEqual": (operator.le, ()), "Equal": (tf.equal, ()), "NotEqual": (tf.not_equal, ()),
        "Mean": (_reduce(tf.reduce_mean), _REDUCE), "Sum": (_reduce(tf.reduce_sum), _REDUCE),
        "Max": (_reduce(tf.reduce_max), _REDUCE), "Min": (_reduce(tf.reduce_min), _REDUCE),
        "GetItem": (lambda x, key: x[tuple(key) if isinstance(key, list) else key], ()),
        "Reshape": (lambda x, newshape: tf.reshape(x, newshape), ("newshape",)),
        "Transpose": (lambda x, axes=None: tf.transpose(x, perm=axes), ("axes",)),
        "ExpandDims": (lambda x, axis: tf.expand_dims(x, axis), _AXIS),
        "Squeeze": (lambda x, axis=None: tf.squeeze(x, axis), _AXIS),
        "Concatenate": (lambda xs, axis=0: tf.concat(list(xs), axis), _AXIS),
        "Cast": (lambda x, dtype: tf.cast(x, dtype), ("dtype",)),
        "Clip": (lambda x, x_min, x_max: tf.clip_by_value(x, x_min, x_max), ("x_min", "x_max")),
        "Softmax": (lambda x, axis=-1: tf.nn.softmax(x, axis=axis), _AXIS),
        "LogSoftmax": (lambda x, axis=-1: tf.nn.log_softmax(x, axis=axis), _AXIS),
        "Gelu": (lambda x, approximate=True: tf.nn.gelu(x, approximate=approximate), ("approximate",)),
        "LeakyRelu": (lambda x, negative_slope=0.2: tf.nn.leaky_relu(x, alpha=negative_slope), ("negative_slope",)),
        "Elu": (_elu, ("alpha",)), "HardSigmoid": (_hard_sigmoid, ("name",)), "HardSilu": (_hard_silu, ("name",))
}
