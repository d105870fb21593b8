"""LayerNormalization in integer-only QAT: :class:`QuantLayerNormalization`.

TFLite has no fused int8 layer normalization; its converter decomposes the float op into MEAN, SUB, MUL, MEAN,
ADD, RSQRT, MUL and the gamma/beta MUL and ADD. Quantization-aware training therefore fake-quantizes every one
of those intermediate tensors (each with its own EMA range), so that the converter gives each an int8 scale and
the file stays integer-only, and Keras computes what the int8 kernels do. XNNPACK runs all of them but RSQRT,
which it has no int8 kernel for (measured with ai-edge-litert 2.3.0), so each normalization leaves one node to
TFLite's builtin kernels.

Forward: mu = Q(mean(x)); d = Q(x - mu); v = Q(mean(Q(d * d))); r = Q(rsqrt(Q(v + eps))); y = Q(d * r);
out = Q(Q(y * Qw(gamma)) + Qw(beta)) (Q: activation fake quant, Qw: symmetric constant fake quant).
Backward: clipped straight-through estimators through every Q.

References: Ba et al. 2016, arXiv 1607.06450; Jacob et al. 2018, arXiv 1712.05877.
"""

from __future__ import annotations

from tfq_ext._compat import resolve_training, smart_cond
from tfq_ext._keras import keras, tf
from tfq_ext.ops.fake_quant import fake_quant
from tfq_ext.quantizers import ActivationQuantizer, deserialize_quantizer

__all__ = ["QuantLayerNormalization"]

_STAGES = ("mean", "centered", "squared", "variance", "shifted", "rstd", "normalized", "scaled", "output")


@keras.utils.register_keras_serializable(package="tfq_ext")
class QuantLayerNormalization(keras.layers.Layer):
    """Layer normalization over the last axis with every intermediate tensor quantized (see module doc).

    Args:
        epsilon: added to the variance.
        center, scale: use beta / gamma (as ``keras.layers.LayerNormalization``).
        quantizer: the :class:`~tfq_ext.quantizers.ActivationQuantizer` settings used for every intermediate.
    """

    def __init__(self, epsilon: float = 1e-3, center: bool = True, scale: bool = True, quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        quantizer = deserialize_quantizer(quantizer)
        self.quantizer = quantizer if quantizer is not None else ActivationQuantizer()

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight("gamma", shape=(channels,), initializer="ones", trainable=self.scale)
        self.beta = self.add_weight("beta", shape=(channels,), initializer="zeros", trainable=self.center)
        self._quantizer_vars = {stage: self.quantizer.build(None, stage, self) for stage in _STAGES}
        super().build(input_shape)

    def _forward(self, x, training: bool):
        def q(stage, tensor):
            return self.quantizer(tensor, training=training, weights=self._quantizer_vars[stage])

        mean = q("mean", tf.reduce_mean(x, axis=-1, keepdims=True))
        centered = q("centered", x - mean)
        variance = q("variance", tf.reduce_mean(q("squared", centered * centered), axis=-1, keepdims=True))
        rstd = tf.math.rsqrt(q("shifted", variance + self.epsilon))
        if training:
            # A variance below half its int8 step rounds to 0 and rsqrt gives inf, which would make the range
            # infinite; in float rsqrt(v + eps) <= 1/sqrt(eps). (At inference the fake quant clamps inf to the
            # range's top, as TFLite's int8 RSQRT saturates; the inference graph has no MINIMUM op.)
            rstd = tf.minimum(rstd, self.epsilon ** -0.5)
        rstd = q("rstd", rstd)
        y = q("normalized", centered * rstd)
        if self.scale:
            bound = tf.maximum(tf.reduce_max(tf.abs(self.gamma)), 1e-8)
            y = q("scaled", y * fake_quant(self.gamma, -bound, bound, narrow_range=True))
        if self.center:
            low = tf.minimum(tf.reduce_min(self.beta), 0.0)
            high = tf.maximum(tf.reduce_max(self.beta), 1e-8)
            y = y + fake_quant(self.beta, low, high)
        return q("output", y)

    def call(self, inputs, training=None):
        return smart_cond(resolve_training(training), lambda: self._forward(inputs, True),
                          lambda: self._forward(inputs, False))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, center=self.center, scale=self.scale,
                      quantizer=keras.utils.serialize_keras_object(self.quantizer))
        return config
