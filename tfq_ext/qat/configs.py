"""tfmot ``QuantizeConfig`` objects for integer-only QAT, and the table that maps layer classes to them.

One config per role, not per layer class: a layer either has a kernel quantized per channel and its output
quantized (conv/dense), only its output quantized (merges, activations, standalone BN, rescaling), or nothing
quantized because TFLite keeps the input's scale (pooling, reshapes, padding, resizing, dropout).
"""

from __future__ import annotations

from typing import Dict, Optional

import tensorflow_model_optimization as tfmot

from tfq_ext._keras import keras
from tfq_ext.quantizers import ActivationQuantizer, WeightQuantizer, deserialize_quantizer

__all__ = ["KernelQuantizeConfig", "OutputQuantizeConfig", "NoOpQuantizeConfig", "KERNEL_LAYOUTS",
           "OUTPUT_LAYERS", "PASSTHROUGH_LAYERS", "SELF_QUANTIZED_LAYERS"]

_QuantizeConfig = tfmot.quantization.keras.QuantizeConfig

# class name -> (kernel attribute, output-channel axis, depthwise layout)
KERNEL_LAYOUTS: Dict[str, tuple] = {
    "Dense": ("kernel", -1, False),
    "Conv1D": ("kernel", -1, False),
    "Conv2D": ("kernel", -1, False),
    "Conv3D": ("kernel", -1, False),
    "Conv2DTranspose": ("kernel", -2, False),
    "DepthwiseConv2D": ("depthwise_kernel", -1, True),
}
# Layers whose output TFLite requantizes: they get an activation quantizer on their output.
# Averages are among them: TFLite's int8 AVERAGE_POOL_2D and MEAN round their result to the output's int8 grid,
# so the QAT model must round there too (passing the average through unquantized leaves 1-3 LSB differences one
# layer later, measured). ScalarOp (a TFOpLambda ``x * a + b``), BorderCorrection and Normalization are this
# package's rewrites' layers (see tfq_ext.qat.lowering).
OUTPUT_LAYERS = frozenset({
    "Add", "Subtract", "Concatenate", "Multiply", "Average", "Maximum", "Minimum", "ReLU", "Activation",
    "LeakyReLU", "BatchNormalization", "Rescaling", "Softmax", "PReLU", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "ScalarOp", "BorderCorrection", "Normalization",
    "LayerScale",
})
# Layers TFLite runs in the input's scale: no quantizer, so the converter propagates the input's parameters.
PASSTHROUGH_LAYERS = frozenset({
    "MaxPooling1D", "MaxPooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Reshape", "Flatten", "Dropout",
    "SpatialDropout1D", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout", "ZeroPadding1D",
    "ZeroPadding2D", "UpSampling1D", "UpSampling2D", "Cropping1D", "Cropping2D", "Permute", "SlicingOpLambda",
    "NearestUpsampling2D", "StochasticDepth",
})
# Layers with quantizers of their own, created by the rewrites (tfq_ext.qat.lowering).
SELF_QUANTIZED_LAYERS = frozenset({"LayerNormalization"})


@keras.utils.register_keras_serializable(package="tfq_ext")
class KernelQuantizeConfig(_QuantizeConfig):
    """Quantizes one kernel attribute with a :class:`WeightQuantizer` and, optionally, the layer's output.

    Args:
        kernel_attr: name of the layer attribute holding the kernel (``kernel``, ``depthwise_kernel``).
        weight_quantizer: the kernel's quantizer.
        output_quantizer: the output's quantizer, or None when a following layer quantizes it.
    """

    def __init__(self, kernel_attr: str, weight_quantizer: WeightQuantizer,
                 output_quantizer: Optional[ActivationQuantizer] = None):
        self.kernel_attr = kernel_attr
        self.weight_quantizer = deserialize_quantizer(weight_quantizer)
        self.output_quantizer = deserialize_quantizer(output_quantizer)

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, self.kernel_attr), self.weight_quantizer)]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        setattr(layer, self.kernel_attr, quantize_weights[0])

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [self.output_quantizer] if self.output_quantizer is not None else []

    def get_config(self):
        return {"kernel_attr": self.kernel_attr,
                "weight_quantizer": keras.utils.serialize_keras_object(self.weight_quantizer),
                "output_quantizer": (keras.utils.serialize_keras_object(self.output_quantizer)
                                     if self.output_quantizer is not None else None)}


@keras.utils.register_keras_serializable(package="tfq_ext")
class OutputQuantizeConfig(_QuantizeConfig):
    """Quantizes only the layer's output (merges, activations, standalone BN); no weights, no activations."""

    def __init__(self, output_quantizer: ActivationQuantizer):
        self.output_quantizer = deserialize_quantizer(output_quantizer)

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [self.output_quantizer] if self.output_quantizer is not None else []

    def get_config(self):
        return {"output_quantizer": keras.utils.serialize_keras_object(self.output_quantizer)}


@keras.utils.register_keras_serializable(package="tfq_ext")
class NoOpQuantizeConfig(OutputQuantizeConfig):
    """Quantizes nothing: for layers whose output a following layer quantizes (e.g. Add followed by ReLU)."""

    def __init__(self):
        super().__init__(None)

    def get_config(self):
        return {}
