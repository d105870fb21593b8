"""Serializable affine quantizers, compatible with tfmot's ``Quantizer`` interface.

``WeightQuantizer``: symmetric, narrow range (int8: [-127, 127], zero point 0), per output channel or per
tensor; the range is recomputed from the current weights on every call ("last value"), so it can never be stale.
``ActivationQuantizer``: asymmetric per tensor, range = EMA of batch min/max (widened to contain 0), with an
optional delay before quantization starts (Jacob et al. Sec. 3).

Forward: fake quantization (``tfq_ext.ops.fake_quant``); backward: clipped straight-through estimator.

References: Jacob et al. 2018, arXiv 1712.05877.
"""

from __future__ import annotations

import tensorflow_model_optimization as tfmot

from tfq_ext._keras import keras, tf
from tfq_ext.ops.fake_quant import fake_quant, fake_quant_per_channel, qrange, symmetric_range
from tfq_ext.ops.ranges import batch_min_max, ema_assign

__all__ = ["WeightQuantizer", "ActivationQuantizer", "FixedRangeQuantizer", "IdentityQuantizer",
           "deserialize_quantizer"]

_TfmotQuantizer = tfmot.quantization.keras.quantizers.Quantizer
# tfmot's wrappers call quantizers from AutoGraph-converted code; these have no tensor-dependent Python control
# flow, so converting them would only re-parse their source in every fresh process and slow down tracing.
_not_converted = tf.autograph.experimental.do_not_convert


class _Quantizer(_TfmotQuantizer):
    """tfmot's Quantizer with value equality: two quantizers are equal when their configs are."""

    def __eq__(self, other):
        return type(other) is type(self) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


def _check_bits(num_bits) -> int:
    if isinstance(num_bits, bool) or not isinstance(num_bits, int):
        raise TypeError(f"`num_bits` must be an int. Received: num_bits={num_bits!r}")
    qrange(num_bits)
    return num_bits


@keras.utils.register_keras_serializable(package="tfq_ext")
class WeightQuantizer(_Quantizer):
    """Symmetric narrow-range weight fake-quantizer (per channel by default).

    Args:
        num_bits: bits per weight, 2..16.
        per_channel: one scale per output channel (TFLite's int8 scheme for conv/depthwise/dense) or one per
            tensor (for accelerators that need it).
        axis: the output-channel axis of the kernel (-1 for Dense/Conv, -2 for Conv2DTranspose).
        depthwise: the kernel is a depthwise kernel (h, w, in, multiplier); its output channels are the last two
            axes merged, which is how TFLite lays them out.
    """

    def __init__(self, num_bits: int = 8, per_channel: bool = True, axis: int = -1, depthwise: bool = False):
        self.num_bits = _check_bits(num_bits)
        self.per_channel = bool(per_channel)
        self.axis = int(axis)
        self.depthwise = bool(depthwise)

    def build(self, tensor_shape, name, layer):
        return {}

    @_not_converted
    def __call__(self, inputs, training=False, weights=None, **kwargs):
        return self.quantize(inputs)

    def quantize(self, kernel: tf.Tensor) -> tf.Tensor:
        """Fake-quantizes ``kernel``; the range comes from the kernel itself."""
        if not self.per_channel:
            bound = tf.maximum(symmetric_range(kernel), 1e-8)
            return fake_quant(kernel, -bound, bound, self.num_bits, narrow_range=True)
        if self.depthwise:
            shape = tf.shape(kernel)
            merged = tf.reshape(kernel, tf.concat([shape[:-2], [1, -1]], axis=0))
            bound = tf.maximum(symmetric_range(merged, axis=-1), 1e-8)
            quantized = fake_quant_per_channel(merged, -bound, bound, -1, self.num_bits, narrow_range=True)
            return tf.reshape(quantized, shape)
        bound = tf.maximum(symmetric_range(kernel, axis=self.axis), 1e-8)
        return fake_quant_per_channel(kernel, -bound, bound, self.axis, self.num_bits, narrow_range=True)

    def get_config(self):
        return {"num_bits": self.num_bits, "per_channel": self.per_channel, "axis": self.axis,
                "depthwise": self.depthwise}



@keras.utils.register_keras_serializable(package="tfq_ext")
class ActivationQuantizer(_Quantizer):
    """Asymmetric per-tensor activation fake-quantizer with an EMA range.

    Training: the range variables move towards the batch [min, max] (the first batch sets them), then the batch
    is fake-quantized with the updated range. Inference: fake quantization with the stored range, which is what
    the TFLite converter turns into the tensor's scale and zero point.

    Args:
        num_bits: bits per activation, 2..16.
        ema_decay: decay of the moving average of batch min/max (the paper's 0.999 for long training runs; the
            default 0.99 suits fine-tuning runs of a few hundred steps).
        quant_delay: training steps during which ranges are tracked but activations pass through unquantized.
    """

    def __init__(self, num_bits: int = 8, ema_decay: float = 0.99, quant_delay: int = 0):
        self.num_bits = _check_bits(num_bits)
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1). Received: ema_decay={ema_decay}")
        if int(quant_delay) < 0:
            raise ValueError(f"`quant_delay` must be >= 0. Received: quant_delay={quant_delay}")
        self.ema_decay = float(ema_decay)
        self.quant_delay = int(quant_delay)

    def build(self, tensor_shape, name, layer):
        def var(suffix, init, dtype=tf.float32):
            return layer.add_weight(f"{name}_{suffix}", shape=(), dtype=dtype, trainable=False,
                                    initializer=keras.initializers.Constant(init))

        return {"min_var": var("min", -6.0), "max_var": var("max", 6.0), "steps": var("steps", 0, tf.int64)}

    @_not_converted
    def __call__(self, inputs, training=False, weights=None, nonnegative: bool = False, **kwargs):
        """Fake-quantizes ``inputs``; ``nonnegative=True`` is the caller's guarantee that ``inputs >= 0`` (a ReLU
        output), so the batch minimum is 0 without a reduction over the batch (the same value either way)."""
        if weights is None:
            raise ValueError("ActivationQuantizer needs the variables returned by `build()` as `weights`.")
        if not training:
            return fake_quant(inputs, weights["min_var"], weights["max_var"], self.num_bits)
        initialized = weights["steps"] > 0
        batch_min, batch_max = batch_min_max(inputs, nonnegative=nonnegative)
        new_min = ema_assign(weights["min_var"], batch_min, self.ema_decay, initialized)
        new_max = ema_assign(weights["max_var"], batch_max, self.ema_decay, initialized)
        steps = weights["steps"].assign_add(1)
        quantized = fake_quant(inputs, new_min, new_max, self.num_bits)
        if self.quant_delay == 0:
            return quantized
        return tf.where(steps > self.quant_delay, quantized, inputs)

    def get_config(self):
        return {"num_bits": self.num_bits, "ema_decay": self.ema_decay, "quant_delay": self.quant_delay}



@keras.utils.register_keras_serializable(package="tfq_ext")
class FixedRangeQuantizer(_Quantizer):
    """Fake-quantizer with a constant range, for outputs whose int8 TFLite kernels fix it.

    TFLite's LOGISTIC and SOFTMAX outputs use scale 1/256 with zero point -128 (range [0, 255/256]) and TANH uses
    1/128 with zero point 0 (range [-1, 127/128]); training with the same grid avoids a requantize op.
    The given [low, high] is shrunk by one step at the top so that the grid is exactly that one.
    """

    def __init__(self, low: float = 0.0, high: float = 1.0, num_bits: int = 8):
        self.num_bits = _check_bits(num_bits)
        if not float(low) < float(high):
            raise ValueError(f"`low` must be < `high`. Received: low={low}, high={high}")
        self.low = float(low)
        self.high = float(high)

    def build(self, tensor_shape, name, layer):
        return {}

    @_not_converted
    def __call__(self, inputs, training=False, weights=None, **kwargs):
        step = (self.high - self.low) / (2 ** self.num_bits)
        return fake_quant(inputs, self.low, self.high - step, self.num_bits)

    def get_config(self):
        return {"low": self.low, "high": self.high, "num_bits": self.num_bits}


@keras.utils.register_keras_serializable(package="tfq_ext")
class IdentityQuantizer(_Quantizer):
    """Passes its input through unchanged: the float slot of a layer that takes a quantizer (for example a
    :class:`~tfq_ext.qat.folding.FoldedBatchNorm` whose output is quantized by the caller, or the float
    reference arm of a comparison that shares the model code)."""

    def build(self, tensor_shape, name, layer):
        return {}

    @_not_converted
    def __call__(self, inputs, training=False, weights=None, **kwargs):
        return inputs

    def get_config(self):
        return {}


def deserialize_quantizer(obj):
    """A quantizer from its serialized form (any of Keras' formats), or ``obj`` itself if already one.

    Resolving the class name here, rather than through Keras' global registry, keeps h5 and SavedModel loading
    (which use the legacy format without registered names) working as well as ``.keras`` files.
    """
    if obj is None or not isinstance(obj, dict):
        return obj
    classes = {cls.__name__: cls for cls in (WeightQuantizer, ActivationQuantizer, FixedRangeQuantizer,
                                                   IdentityQuantizer)}
    name = obj.get("class_name")
    if name in classes:
        return classes[name].from_config(obj.get("config", {}))
    return keras.utils.deserialize_keras_object(obj)
