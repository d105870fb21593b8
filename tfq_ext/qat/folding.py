"""Batch-norm folding during QAT with the correction of Jacob et al. (Sec. 3.2, Fig. C.8).

A conv/dense layer followed by BatchNormalization is trained as one layer whose quantized kernel is the folded
kernel ``w * gamma / sigma_moving``, exactly the kernel integer inference uses. Before the freeze step, the
output is rescaled by ``sigma_moving / sigma_batch`` and shifted with the batch mean, so training still sees
batch-normalised activations; after it, moving statistics are used and training equals inference.

Batch statistics come from the same (quantized, folded) convolution rescaled per channel, so a training step
costs one convolution, not the two of TF's ``fold_batch_norms`` rewrite; with exact weights both are equal.
The rescaling is applied to the (small) kernel, ``conv(x, Q(w*g/s_m) * s_m/g)``, and the batch correction is then
exactly a batch normalization of that convolution, run by TF's fused batch-norm kernels: before the freeze
step a training step costs what conv + BatchNormalization cost, with no conditional in the graph when
``freeze_bn_delay`` is None.

Forward (training, before freeze): y = s_m/s_b * conv(x, Q(w*g/s_m)) + beta - g*(mu_b - b)/s_b.
Forward (after freeze / inference): y = conv(x, Q(w*g/s_m)) + beta - g*(mu_m - b)/s_m.
Backward: through the batch moments as in BatchNormalization; clipped STE through Q.

References: Jacob et al. 2018, arXiv 1712.05877; Krishnamoorthi 2018, arXiv 1806.08342 (Sec. 3.2).
"""

from __future__ import annotations

from typing import Optional

from tfq_ext._compat import resolve_training, smart_cond
from tfq_ext._keras import keras, tf
from tfq_ext.ops.fake_quant import fake_quant_folded_kernel
from tfq_ext.quantizers import ActivationQuantizer, WeightQuantizer, deserialize_quantizer

__all__ = ["FoldedBatchNorm", "check_freeze_bn_delay"]

# TF's fused batch-norm kernels need epsilon >= 1.001e-5 (the limit tf.nn.fused_batch_norm enforces).
_FUSED_MIN_EPSILON = 1.001e-5


def _batch_norm(z: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor, epsilon: float):
    """Training-mode batch normalization over all axes but the last, through TF's fused kernel where it applies.

    Returns:
        (output, batch mean, biased batch variance). Only the output carries a gradient (through the batch
        moments, as in BatchNormalization); the moments are for the moving averages.
    """
    channels = int(z.shape[-1])
    if epsilon < _FUSED_MIN_EPSILON or z.dtype != tf.float32:
        mean, var = tf.nn.moments(z, axes=list(range(z.shape.rank - 1)))
        return (z - mean) * (scale * tf.math.rsqrt(var + epsilon)) + offset, mean, var
    # The fused kernel takes NHWC tensors; reducing over every axis but the channels only needs the layout
    # [anything, 1, 1, C], a free reshape.
    flat = z if z.shape.rank == 4 else tf.reshape(z, [-1, 1, 1, channels])
    out, mean, var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=flat, scale=scale, offset=offset, mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=epsilon,
        exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
    if z.shape.rank != 4:
        out = tf.reshape(out, tf.shape(z))
    # The fused kernel returns the unbiased variance var * n/(n-1) (var itself for n = 1, where it is 0); the
    # moving statistics use the biased one, as BatchNormalization's moments do: var * (1 - 1/n), n = size / C.
    var = var - var * (float(channels) / tf.cast(tf.size(z, out_type=tf.int64), tf.float32))
    return out, mean, var


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
        self._nonnegative = keras.activations.serialize(self.activation) in ("relu", "relu6")

    def build(self, input_shape):
        self.layer.build(input_shape)
        # A plain list hides the variable from Keras' attribute tracking: the inner layer already owns it.
        self._kernel_holder = [getattr(self.layer, self.kernel_attr)]
        channels = int(self.layer.compute_output_shape(input_shape)[-1])
        self._channel_shape = self._broadcast_shape(channels)
        self._fused_layout = self._fused_kernel_layout(channels)

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

    def _fused_kernel_layout(self, channels: int):
        """How :func:`fake_quant_folded_kernel` can take the kernel: ``"channels_last"`` (as it is), the shape
        ``(-1, channels)`` (a depthwise kernel, its channels merged), or None where the weight quantizer is not a
        :class:`WeightQuantizer` quantizing those channels."""
        quantizer = self.weight_quantizer
        if type(quantizer) is not WeightQuantizer:
            return None
        rank = len(self.kernel.shape)
        if self.kernel_attr == "depthwise_kernel":
            return (-1, channels) if quantizer.depthwise or not quantizer.per_channel else None
        return "channels_last" if not quantizer.depthwise and quantizer.axis % rank == rank - 1 else None

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

    # Plain Python on Python conditions: AutoGraph would only re-parse the source of every method (about a
    # second per fresh process) and route each call through its converter.
    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        training = resolve_training(training)
        return smart_cond(training, lambda: self._train_call(inputs), lambda: self._inference_call(inputs))

    def _inference_call(self, inputs):
        y = self._convolve(inputs, self.weight_quantizer(self.folded_kernel(), training=False))
        return self._quantize_output(self.activation(y + self.folded_bias()), training=False)

    def _quantize_output(self, y, training):
        if isinstance(self.output_quantizer, ActivationQuantizer):
            # After ReLU/ReLU6 the batch minimum is 0 by construction: the quantizer need not reduce over y.
            return self.output_quantizer(y, training=training, weights=self._output_vars,
                                         nonnegative=self._nonnegative)
        return self.output_quantizer(y, training=training, weights=self._output_vars)

    def _train_call(self, inputs):
        frozen = None
        if self.freeze_bn_delay is not None:
            frozen = self.steps >= self.freeze_bn_delay  # read before this step's increment
        self.steps.assign_add(1)  # counted even when never frozen, so a later freeze_bn_delay sees the steps
        variance = tf.convert_to_tensor(self.moving_variance)  # read once: the factor and the moving average
        quantized, unfolded, scale = self._train_kernels(variance, with_quantized=frozen is not None)
        if frozen is None:
            # Never frozen: no conditional in the training graph.
            y = self._batch_normalized(inputs, unfolded, scale, variance)
        else:
            y = tf.cond(frozen, lambda: self._convolve(inputs, quantized) + self.folded_bias(),
                        lambda: self._batch_normalized(inputs, unfolded, scale, variance))
        return self._quantize_output(self.activation(y), training=True)

    def _train_kernels(self, variance, with_quantized: bool):
        """``(Q(w f), Q(w f) / f, BN scale)`` of a training step, ``f = gamma / sigma_m`` (see _batch_normalized).

        Where the weight quantizer is a :class:`WeightQuantizer` with the output channels last, one function with
        its gradient written out computes them (:func:`~tfq_ext.ops.fake_quant.fake_quant_folded_kernel`); the
        same arithmetic through any other quantizer is differentiated op by op.
        """
        inv_sigma = tf.math.rsqrt(variance + self.epsilon)
        gamma = tf.convert_to_tensor(self.gamma)
        if self._fused_layout is not None:
            merge = self._fused_layout != "channels_last"  # a depthwise kernel: merge (in, multiplier)
            kernel = tf.reshape(self.kernel, self._fused_layout) if merge else self.kernel
            outputs = fake_quant_folded_kernel(kernel, gamma, inv_sigma, self.weight_quantizer.num_bits,
                                               self.weight_quantizer.per_channel, return_quantized=with_quantized)
            shape = self.kernel.shape.as_list()
            kernels = [tf.reshape(k, shape) if merge else k for k in outputs[:-1]]
            return (kernels[0] if with_quantized else None), kernels[-1], outputs[-1]
        factor = gamma * inv_sigma
        quantized = self.weight_quantizer(self.kernel * tf.reshape(factor, self._channel_shape), training=True)
        # |f| <= 1e-12 is divided by 1e-12 instead, as the moments were before. There the scale is 1e-12 * sigma_m
        # (not gamma = 0), which keeps a gradient through the kernel for a zero gamma, as before.
        regular = tf.abs(factor) > 1e-12
        unfolded = quantized / tf.reshape(tf.where(regular, factor, 1e-12), self._channel_shape)
        return quantized, unfolded, tf.where(regular, gamma, 1e-12 / inv_sigma)

    def _batch_normalized(self, inputs, unfolded, scale, variance):
        """The batch-corrected training output, as one batch normalization of the rescaled convolution.

        With ``f = gamma / sigma_m``, ``y = conv(x, Q(w f))`` and ``z = y / f``, the corrected output
        ``y * sigma_m / sigma_b + beta - gamma * (mu_b - b) / sigma_b`` (``mu_b - b``, ``sigma_b``: the batch
        mean and deviation of ``z``) equals ``f sigma_m (z - mean(z)) / sqrt(var(z) + eps) + beta``: a batch
        normalization of ``z`` with scale ``f sigma_m`` (= gamma), and ``z = conv(x, Q(w f) / f)`` because the
        convolution is linear in its kernel. Dividing the kernel instead of the activations and using TF's fused
        batch-norm kernels (forward and gradient) makes a training step cost a convolution plus a batch norm.
        """
        z = self._convolve(inputs, unfolded)
        out, mean_z, var_z = _batch_norm(z, scale, self.beta, self.epsilon)
        batch_mean = mean_z + self.conv_bias if self.conv_bias is not None else mean_z
        self.moving_mean.assign(self.momentum * self.moving_mean + (1.0 - self.momentum) * batch_mean)
        self.moving_variance.assign(self.momentum * variance + (1.0 - self.momentum) * var_z)
        return out

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
