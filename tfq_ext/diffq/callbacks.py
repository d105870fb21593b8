"""Training callback: the true (packed, rounded-bits) size and the mean learned bits after every epoch.

References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987.
"""

from __future__ import annotations

import warnings

from tfq_ext._keras import keras
from tfq_ext.diffq.apply import mean_bits, true_size
from tfq_ext.diffq.optimizer import DiffQOptimizer

__all__ = ["DiffQLogger"]


class DiffQLogger(keras.callbacks.Callback):
    """Adds ``diffq_true_kib`` and ``diffq_mean_bits`` to the epoch logs (so they land in ``History``).

    Args:
        verbose: 1 prints one line per epoch, 0 only records.

    Warns once at the start of training when the model is not compiled with :class:`DiffQOptimizer` (the bits
    logits would then share the weights' optimizer, weight decay included).
    """

    def __init__(self, verbose: int = 1):
        super().__init__()
        if verbose not in (0, 1):
            raise ValueError(f"`verbose` must be 0 or 1. Received: verbose={verbose!r}")
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        if not isinstance(getattr(self.model, "optimizer", None), DiffQOptimizer):
            warnings.warn("the model is not compiled with tfq_ext.diffq.DiffQOptimizer: the bits logits are trained "
                          "by the model's own optimizer (its learning rate and weight decay).", stacklevel=2)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["diffq_true_kib"] = true_size(self.model) / 1024.0
        logs["diffq_mean_bits"] = mean_bits(self.model)
        if self.verbose:
            print(f"[DiffQ] epoch {epoch + 1}: true size {logs['diffq_true_kib']:.1f} KiB, "
                  f"mean bits {logs['diffq_mean_bits']:.2f}", flush=True)
