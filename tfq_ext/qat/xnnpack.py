"""Keras layers of the QAT graph that compute what XNNPACK-delegated int8 ops compute.

They replace layers whose TFLite ops XNNPACK does not run in int8 (see ``tfq_ext.qat.lowering``):

- :class:`BorderCorrection`: the second half of a ``same`` average pool (after a depthwise k x k sum / (k*k)):
  multiplies the border positions by ``k*k / count``, a constant the converter stores as an int8 tensor and
  XNNPACK multiplies in (MUL with a broadcast constant).
- :class:`NearestUpsampling2D`: nearest-neighbour upsampling by integer factors as CONCATENATION + RESHAPE
  (XNNPACK has no int8 RESIZE_NEAREST_NEIGHBOR); the int8 values are copied, so the scale is the input's.
- :class:`ScalarAffine`: ``clip(scale * x + offset)`` on tensors that are not images (MUL or ADD with a constant).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tfq_ext._keras import keras, tf
from tfq_ext.ops.fake_quant import fake_quant

__all__ = ["BorderCorrection", "NearestUpsampling2D", "ScalarAffine", "border_correction_map"]


def _window_counts(size, k: int, s: int):
    """In-image elements of each 'same'-padded window along one axis (TFLite's and TensorFlow's divisor)."""
    size = tf.cast(size, tf.int32)
    out = (size + s - 1) // s
    pad = tf.maximum((out - 1) * s + k - size, 0)
    start = tf.range(out) * s - pad // 2
    return tf.minimum(start + k, size) - tf.maximum(start, 0)


def border_correction_map(height, width, pool_size: Sequence[int], strides: Sequence[int]) -> tf.Tensor:
    """``k*k / count`` per output position of a ``same`` average pool over a (height, width) input, shape
    (1, out_h, out_w, 1). Plain TF ops, so the converter folds it into a constant at a static input size."""
    rows = _window_counts(height, pool_size[0], strides[0])
    cols = _window_counts(width, pool_size[1], strides[1])
    counts = tf.cast(rows[:, None] * cols[None, :], tf.float32)
    return (float(pool_size[0] * pool_size[1]) / counts)[None, :, :, None]


def map_range(pool_size: Sequence[int], num_bits: int = 8):
    """A fake-quant [min, max] whose grid holds every possible ``k*k / count`` exactly when a common step
    allows it (3x3 pools: 1, 1.5, 2.25, ... are multiples of 0.25), else [0, k*k] (rounded; QAT sees the
    same rounding as the file)."""
    area = pool_size[0] * pool_size[1]
    values = np.array([area / (r * c) for r in range(1, pool_size[0] + 1) for c in range(1, pool_size[1] + 1)])
    levels = 2 ** num_bits - 1
    for denominator in range(1, levels + 1):
        codes = values * denominator
        if np.allclose(codes, np.round(codes), atol=1e-6) and area * denominator <= levels:
            return 0.0, levels / denominator
    return 0.0, float(area)


@keras.utils.register_keras_serializable(package="tfq_ext")
class BorderCorrection(keras.layers.Layer):
    """Rescales a depthwise-sum average pool's border to TFLite's ``same`` average (see the module doc).

    Forward: ``x * fake_quant(k*k / count)``; the constant's int8 grid holds its values exactly where possible.
    Backward: ``dy * map`` (the constant has no gradient).

    Args:
        pool_size: the pool's (kh, kw).
        strides: the pool's strides. Only (1, 1) derives the pool's input size from this layer's input;
            other strides need ``input_size``.
        input_size: (height, width) of the pool's input, or None for stride 1.
        quantize_map: fake-quantize the map (QAT); False for a float model that post-training quantization
            calibrates.
    """

    def __init__(self, pool_size=(2, 2), strides=(1, 1), input_size: Optional[Sequence[int]] = None,
                 quantize_map: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.quantize_map = bool(quantize_map)
        self.pool_size = tuple(int(k) for k in pool_size)
        self.strides = tuple(int(s) for s in strides)
        self.input_size = None if input_size is None else tuple(int(v) for v in input_size)
        if self.input_size is None and self.strides != (1, 1):
            raise ValueError(f"`input_size` is required for strides other than (1, 1). Received: "
                             f"strides={self.strides}, input_size=None")
        self._range = map_range(self.pool_size)

    def call(self, inputs):
        if self.input_size is not None:
            height, width = self.input_size
        else:
            shape = tf.shape(inputs)
            height = inputs.shape[1] if inputs.shape[1] is not None else shape[1]
            width = inputs.shape[2] if inputs.shape[2] is not None else shape[2]
        values = border_correction_map(height, width, self.pool_size, self.strides)
        factor = fake_quant(values, *self._range) if self.quantize_map else values
        return inputs * tf.cast(factor, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides, input_size=self.input_size,
                      quantize_map=self.quantize_map)
        return config


@keras.utils.register_keras_serializable(package="tfq_ext")
class NearestUpsampling2D(keras.layers.Layer):
    """UpSampling2D(interpolation="nearest") as concatenations and reshapes (channels last).

    ``concat([x] * b, axis=-1)`` reshaped to (h, w*b, c) repeats every column b times; the same along the
    width axis repeats every row a times. Forward and backward are those of ``UpSampling2D``.

    Args:
        size: integer upsampling factors (rows, columns).
    """

    def __init__(self, size=(2, 2), **kwargs):
        super().__init__(**kwargs)
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.size = tuple(int(v) for v in size)
        if any(v < 1 for v in self.size):
            raise ValueError(f"`size` must be positive integers. Received: size={size}")

    @staticmethod
    def _repeat(x, times: int, axis: int):
        # At most 5 inputs per CONCATENATION (what XNNPACK delegates), nested for larger factors.
        parts = [x] * times
        while len(parts) > 5:
            parts = [tf.concat(parts[i:i + 5], axis=axis) if len(parts[i:i + 5]) > 1 else parts[i]
                     for i in range(0, len(parts), 5)]
        return tf.concat(parts, axis=axis) if len(parts) > 1 else parts[0]

    def call(self, inputs):
        rows, cols = self.size
        shape = tf.shape(inputs)
        static = inputs.shape
        h = static[1] if static[1] is not None else shape[1]
        w = static[2] if static[2] is not None else shape[2]
        c = static[3] if static[3] is not None else shape[3]
        x = inputs
        if cols > 1:
            x = tf.reshape(self._repeat(x, cols, -1), [-1, h, w * cols, c])
        if rows > 1:
            x = tf.reshape(self._repeat(x, rows, 2), [-1, h * rows, w * cols, c])
        return x

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[1] = None if shape[1] is None else shape[1] * self.size[0]
        shape[2] = None if shape[2] is None else shape[2] * self.size[1]
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config["size"] = self.size
        return config


@keras.utils.register_keras_serializable(package="tfq_ext")
class ScalarAffine(keras.layers.Layer):
    """``clip(scale * x + offset, low, high)`` with Python constants (a ``x * c`` / ``x + c`` TF op).

    TFLite runs it as MUL or ADD with a constant (int8, delegated); the clip is a fused ReLU/ReLU6 or, for any
    other [low, high], the saturation of the fixed output range that ``quantize_model`` gives the layer (the
    layer alone does not clip then).

    Args:
        scale, offset: the affine's constants.
        clip: None or [low, high] (either may be None).
    """

    def __init__(self, scale: float = 1.0, offset: float = 0.0, clip=None, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.offset = float(offset)
        self.clip = None if clip is None else [None if c is None else float(c) for c in clip]

    def call(self, inputs):
        x = inputs
        if self.scale != 1.0:
            x = x * self.scale
        if self.offset != 0.0:
            x = x + self.offset
        if self.clip is not None and self.clip[0] == 0.0 and self.clip[1] in (None, 6.0):
            x = tf.nn.relu(x) if self.clip[1] is None else tf.nn.relu6(x)
        # Any other clip is the saturation of the fixed output range quantize_model gives this layer: a
        # clip_by_value here would become MAXIMUM/MINIMUM ops, which XNNPACK does not run in int8.
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, offset=self.offset, clip=self.clip)
        return config
