"""DiffQ: learned bits per group of weights through pseudo-quantization noise and a differentiable size penalty.

    qmodel = apply_diffq(model, group_size=16, penalty=5.0, min_size=0)
    qmodel.compile(DiffQOptimizer(keras.optimizers.Adam(1e-3), bits_learning_rate=1e-3), loss, metrics)
    qmodel.fit(x, y, callbacks=[DiffQLogger()])
    true_size(qmodel); export_packed(qmodel, "model.diffq"); export_tflite(qmodel, x[:200])

References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987.
"""

from tfq_ext.diffq.apply import (TARGET_MODES, apply_diffq, apply_uniform, diffq_layers, estimated_size,
                                 export_tflite, freeze_bits, learned_bits, mean_bits, set_penalty, size_report,
                                 to_dense_model, true_size)
from tfq_ext.diffq.callbacks import DiffQLogger
from tfq_ext.diffq.export import PackedModel, PackedTensor, export_packed
from tfq_ext.diffq.optimizer import DiffQOptimizer, is_bits_logits
from tfq_ext.diffq.plot import plot_bits
from tfq_ext.diffq.wrappers import KERNEL_ATTRS, DiffQWrapper, UniformQuantWrapper

__all__ = ["DiffQLogger", "DiffQOptimizer", "DiffQWrapper", "KERNEL_ATTRS", "PackedModel", "PackedTensor",
           "TARGET_MODES", "UniformQuantWrapper", "apply_diffq", "apply_uniform", "diffq_layers", "estimated_size",
           "export_packed", "export_tflite", "freeze_bits", "is_bits_logits", "learned_bits", "mean_bits",
           "plot_bits", "set_penalty", "size_report", "to_dense_model", "true_size"]
