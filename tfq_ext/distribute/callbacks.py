"""A Keras callback that logs AdaComp's traffic: bytes exchanged per step and compression per layer kind.

References:
    Chen et al., "AdaComp", AAAI 2018, arXiv 1712.02679.
"""

from __future__ import annotations

from tfq_ext._keras import keras
from tfq_ext.distribute.compressor import AdaComp

__all__ = ["AdaCompLogger"]


class AdaCompLogger(keras.callbacks.Callback):
    """Adds AdaComp's per-epoch traffic to the epoch logs (so it lands in ``History``) and keeps a list.

    Logged keys (per epoch; bytes are per replica and step): ``adacomp_wire_bytes_per_step``,
    ``adacomp_dense_bytes_per_step``, ``adacomp_wire_reduction`` and ``adacomp_compression_<kind>`` for each
    layer kind present (``conv``, ``fc``, ``other``; index bits counted).

    Args:
        compressor: the :class:`AdaComp` to read; default ``model.optimizer.adacomp``.

    References:
        arXiv 1712.02679.
    """

    def __init__(self, compressor: AdaComp | None = None):
        super().__init__()
        if compressor is not None and not isinstance(compressor, AdaComp):
            raise TypeError(f"`compressor` must be an AdaComp instance or None. Received: compressor={compressor!r}")
        self.compressor = compressor
        self.epochs = []
        self._previous = None

    def _compressor(self) -> AdaComp:
        if self.compressor is not None:
            return self.compressor
        found = getattr(getattr(self.model, "optimizer", None), "adacomp", None)
        if found is None:
            raise ValueError("AdaCompLogger found no compressor: compile the model with "
                             "tfq_ext.distribute.with_adacomp(optimizer) or pass `compressor`. "
                             f"Received: optimizer={getattr(self.model, 'optimizer', None)!r}")
        return found

    def on_train_begin(self, logs=None):
        self._previous = self._compressor().report()

    def on_epoch_end(self, epoch, logs=None):
        now = self._compressor().report()
        epoch_stats = _delta(now, self._previous or {"steps": 0})
        self._previous = now
        self.epochs.append(epoch_stats)
        if logs is not None:
            logs.update({f"adacomp_{k}": v for k, v in epoch_stats.items()
                         if k.endswith(("per_step", "reduction", "compression"))})


def _delta(now: dict, before: dict) -> dict:
    """Stats over the steps between two cumulative reports (the counters only ever grow)."""
    steps = now.get("steps", 0) - before.get("steps", 0)
    out = {"steps": steps}
    if steps <= 0:
        return out
    wire = now["wire_bytes"] - before.get("wire_bytes", 0.0)
    dense = now["dense_bytes"] - before.get("dense_bytes", 0.0)
    out.update(wire_bytes_per_step=wire / steps, dense_bytes_per_step=dense / steps,
               wire_reduction=dense / wire if wire else float("nan"))
    for key in now:
        if key.endswith("_elements"):
            kind = key[: -len("_elements")]
            elements = now[key] - before.get(key, 0.0)
            bits = now[f"{kind}_bits"] - before.get(f"{kind}_bits", 0.0)
            if elements and bits:
                out[f"{kind}_sent_fraction"] = (now[f"{kind}_sent"] - before.get(f"{kind}_sent", 0.0)) / elements
                out[f"{kind}_compression"] = 32.0 * elements / bits
    return out
