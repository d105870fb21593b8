"""tfq_ext: Keras-native quantization methods and integer-only TFLite export.

Import ``tfq_ext`` before TensorFlow (or set ``TF_USE_LEGACY_KERAS=1``): it selects the Keras 2 API (tf_keras)
that tensorflow-model-optimization and tensorflow-gnn require.
"""

from tfq_ext._keras import keras  # noqa: F401  (chooses tf_keras first)
from tfq_ext import ops, quantizers  # noqa: E402
from tfq_ext.qat import quantize_model  # noqa: E402
from tfq_ext.size import model_size, size_summary  # noqa: E402
from tfq_ext.compress import compress_model  # noqa: E402

__all__ = ["compress_model", "model_size", "ops", "quantizers", "quantize_model", "size_summary"]
__version__ = "0.1.0"
