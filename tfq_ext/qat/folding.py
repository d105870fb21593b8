"""Batch-norm folding during QAT with the correction of Jacob et al. (Sec. 3.2, Fig. C.8).

A conv/dense layer followed by BatchNormalization is trained as one layer whose quantized kernel is the folded
kernel ``w * gamma / sigma_moving``, exactly the kernel integer inference uses. Before the freeze step, the
output is rescaled by ``sigma_moving / sigma_batch`` and shifted with the batch mean, so training still sees
batch-normalised activations; after it, moving statistics are used and training equals inference.

Batch statistics come from the same (quantized, folded) convolution rescaled per channel, so a training step
costs one convolution, not the two of TF's ``fold_batch_norms`` rewrite; with exact weights both are equal.

Forward (training, before freeze): y = s_m/s_b * conv(x, Q(w*g/s_m)) + beta - g*(mu_b - b)/s_b.
Forward (after freeze / inference): y = conv(x, Q(w*g/s_m)) + beta - g*(mu_m - b)/s_m.
Backward: through the batch moments as in BatchNormalization; clipped STE through Q.

References: Jacob et al. 2018, arXiv 1712.05877; Krishnamoorthi 2018, arXiv 1806.08342 (Sec. 3.2).
"""

from __future__ import annotations

from typing import Optional

from tfq_ext._compat import resolve_training, smart_cond
from tfq_ext._keras import keras, tf
from tfq_ext.quantizers import ActivationQuantizer, WeightQuantizer, deserialize_quantizer

__all__ = ["FoldedBatchNorm", "check_freeze_bn_delay"]


def check_freeze_bn_delay(freeze_bn_delay) -> Optional[int]:
    """Validates a ``freeze_bn_delay`` argument (None or an int >= 0) and returns it as a Python int or None."""
    if freeze_bn_delay is None:
        return None
    if isinstance(freeze_bn_delay, bool) or not isinstance(freeze_bn_delay, int) or freeze_bn_delay < 0:
        raise ValueError(f"`freeze_bn_delay` must be None or an int >= 0. Received: "
                         f"freeze_bn_delay={freeze_bn_delay!r}")
    return int(freeze_bn_delay)


@keras.utils.register_keras_serializable(package="tfq_ext")
class FoldedBatchNorm(keras.layers.Layer):
    """A kernel layer (Dense, Conv1D/2D, DepthwiseConv2D, Conv2DTranspose) with its BatchNormalization folded in.

    Args:
        layer: the kernel layer (instance or serialized config); its own bias, if any, is kept as ``conv_bias``.
        kernel_attr: attribute holding the kernel (``kernel`` or ``depthwise_kernel``).
        weight_quantizer: quantizer of the folded kernel.
        output_quantizer: quantizer of the output (after the activation).
        epsilon, momentum, center, scale: the BatchNormalization's settings.
        activation: activation fused after the BN (``linear``, ``relu``, ``relu6``).
        freeze_bn_delay: training steps after which moving statistics are used and no longer updated
            (None: never freeze).
    """

    def __init__(self, layer, kernel_attr: str = "kernel", weight_quantizer=None, output_quantizer=None,
                 epsilon: float = 1e-3,
                 momentum: float = 0.99, center: bool = True, scale: bool = True, activation="linear",
                 freeze_bn_delay: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.layers.deserialize(layer)
        self.use_conv_bias = bool(layer.get_config().get("use_bias", False))
        config = layer.get_config()
        config.update(use_bias=False, activation="linear")
        # The inner layer only convolves: bias and activation are applied after the BN arithmetic.
        self.layer = type(layer).from_config(config)
        self.kernel_attr = kernel_attr
        weight_quantizer = deserialize_quantizer(weight_quantizer)
        self.weight_quantizer = weight_quantizer if weight_quantizer is not None else WeightQuantizer()
        output_quantizer = deserialize_quantizer(output_quantizer)
        self.output_quantizer = output_quantizer if output_quantizer is not None else ActivationQuantizer()
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.center = bool(center)
        self.scale = bool(scale)
        self.activation = keras.activations.get(activation)
        self.freeze_bn_delay = check_freeze_bn_delay(freeze_bn_delay)

    def build(self, input_shape):
        self.layer.build(input_shape)
        # A plain list hides the variable from Keras' attribute tracking: the inner layer already owns it.
        self._kernel_holder = [getattr(self.layer, self.kernel_attr)]
        channels = int(self.layer.compute_output_shape(input_shape)[-1])
        self._channel_shape = self._broadcast_shape(channels)

        def add(name, init, trainable=True, dtype=tf.float32, shape=(channels,)):
            return self.add_weight(name, shape=shape, dtype=dtype, trainable=trainable,
                                   initializer=keras.initializers.get(init))

        self.conv_bias = add("conv_bias", "zeros") if self.use_conv_bias else None
        self.gamma = add("gamma", "ones", trainable=self.scale)
        self.beta = add("beta", "zeros", trainable=self.center)
        self.moving_mean = add("moving_mean", "zeros", trainable=False)
        self.moving_variance = add("moving_variance", "ones", trainable=False)
        self.steps = add("steps", "zeros", trainable=False, dtype=tf.int64, shape=())
        self._output_vars = self.output_quantizer.build(None, "output", self)
        super().build(input_shape)

    @property
    def kernel(self) -> tf.Variable:
        """The unfolded kernel variable (owned by the inner layer; not tracked twice)."""
        return self._kernel_holder[0]

    def _broadcast_shape(self, channels: int):
        """Shape that broadcasts a per-output-channel vector over the kernel."""
        kernel_shape = self.kernel.shape
        if self.kernel_attr == "depthwise_kernel":  # (h, w, in, multiplier): channels = in * multiplier
            return [1] * (len(kernel_shape) - 2) + [int(kernel_shape[-2]), int(kernel_shape[-1])]
        axis = getattr(self.weight_quantizer, "axis", -1) % len(kernel_shape)
        shape = [1] * len(kernel_shape)
        shape[axis] = channels
        return shape

    def folded_kernel(self) -> tf.Tensor:
        """The float kernel integer inference uses: ``w * gamma / sqrt(moving_variance + eps)``."""
        factor = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
        return self.kernel * tf.reshape(factor, self._channel_shape)

    def folded_bias(self) -> tf.Tensor:
        """The bias integer inference uses: ``beta + gamma * (b - moving_mean) / sigma_moving``."""
        bias = self.conv_bias if self.conv_bias is not None else 0.0
        return self.beta + self.gamma * (bias - self.moving_mean) * tf.math.rsqrt(self.moving_variance + self.epsilon)

    def _convolve(self, inputs, kernel):
        setattr(self.layer, self.kernel_attr, kernel)
        try:
            return self.layer.call(inputs)
        finally:
            setattr(self.layer, self.kernel_attr, self.kernel)

    def call(self, inputs, training=None):
        training = resolve_training(training)
        y = self._convolve(inputs, self.weight_quantizer(self.folded_kernel(), training=training))
        frozen = (tf.constant(False) if self.freeze_bn_delay is None
                  else self.steps >= self.freeze_bn_delay)
        return smart_cond(
            training,
            lambda: self.output_quantizer(self.activation(self._train_output(y, frozen)), training=True,
                                          weights=self._output_vars),
            lambda: self.output_quantizer(self.activation(y + self.folded_bias()), training=False,
                                          weights=self._output_vars))

    def _train_output(self, y, frozen):
        self.steps.assign_add(1)
        return tf.cond(frozen, lambda: y + self.folded_bias(), lambda: self._batch_corrected(y))

    def _batch_corrected(self, y):
        reduce_axes = list(range(y.shape.rank - 1))
        mean_y, var_y = tf.nn.moments(y, axes=reduce_axes)
        sigma_m = tf.sqrt(self.moving_variance + self.epsilon)
        factor = self.gamma / sigma_m
        # y = factor * conv(x, w) per channel, so conv's batch moments are y's divided by factor (and its square).
        safe = tf.where(tf.abs(factor) > 1e-12, factor, tf.fill(tf.shape(factor), 1e-12))
        bias = self.conv_bias if self.conv_bias is not None else 0.0
        batch_mean = mean_y / safe + bias
        batch_var = var_y / tf.square(safe)
        self.moving_mean.assign(self.momentum * self.moving_mean + (1.0 - self.momentum) * tf.stop_gradient(batch_mean))
        self.moving_variance.assign(self.momentum * self.moving_variance
                                    + (1.0 - self.momentum) * tf.stop_gradient(batch_var))
        sigma_b = tf.sqrt(batch_var + self.epsilon)
        return y * (sigma_m / sigma_b) + self.beta - self.gamma * (batch_mean - bias) / sigma_b

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        inner = self.layer.get_config()
        inner["use_bias"] = self.use_conv_bias  # restore the original layer's bias flag
        config.update(
            layer=keras.layers.serialize(type(self.layer).from_config(inner)),
            kernel_attr=self.kernel_attr,
            weight_quantizer=keras.utils.serialize_keras_object(self.weight_quantizer),
            output_quantizer=keras.utils.serialize_keras_object(self.output_quantizer),
            epsilon=self.epsilon, momentum=self.momentum, center=self.center, scale=self.scale,
            activation=keras.activations.serialize(self.activation),
            freeze_bn_delay=self.freeze_bn_delay,
        )
        return config
