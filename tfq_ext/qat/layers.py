"""Keras layers of the integer-only QAT graph that tfmot's wrapper cannot express.

- :class:`QuantizeInput`: fake-quantizes a model input with an :class:`ActivationQuantizer` (the int8 input
  tensor's scale and zero point in the exported file).
"""

from __future__ import annotations

from tfq_ext._compat import resolve_training, smart_cond
from tfq_ext._keras import keras, tf
from tfq_ext.quantizers import ActivationQuantizer, deserialize_quantizer

__all__ = ["QuantizeInput"]


@keras.utils.register_keras_serializable(package="tfq_ext")
class QuantizeInput(keras.layers.Layer):
    """Fake-quantizes its input (EMA range in training, stored range at inference).

    Args:
        quantizer: an :class:`ActivationQuantizer` (or its serialized config).
    """

    def __init__(self, quantizer=None, **kwargs):
        super().__init__(**kwargs)
        quantizer = deserialize_quantizer(quantizer)
        self.quantizer = quantizer if quantizer is not None else ActivationQuantizer()

    def build(self, input_shape):
        self._quantizer_vars = self.quantizer.build(input_shape, "input", self)
        super().build(input_shape)

    # No tensor-dependent Python control flow: AutoGraph conversion would only cost tracing time.
    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        return smart_cond(
            resolve_training(training),
            lambda: self.quantizer(inputs, training=True, weights=self._quantizer_vars),
            lambda: self.quantizer(inputs, training=False, weights=self._quantizer_vars),
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["quantizer"] = keras.utils.serialize_keras_object(self.quantizer)
        return config
