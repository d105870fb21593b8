"""Fine-tuning helper shared by the methods: ``model.fit`` for a whole or fractional number of epochs."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tfq_ext._keras import tf

__all__ = ["fit_epochs"]


def fit_epochs(model, x, y, epochs: float, batch_size: int, *, seed: Optional[int] = None, verbose: int = 0,
               callbacks: Sequence = ()) -> None:
    """Fits ``model`` for ``epochs`` epochs; a fractional part trains one more pass over that share of the data.

    The share is a random subset drawn with ``seed`` (datasets are often sorted by class), or the first rows
    when ``seed`` is None (data the caller has shuffled). ``y=None``: ``x`` is a ``tf.data.Dataset`` of
    ``(x, y)`` batches, whose fractional share needs a known length.
    """
    whole, part = int(epochs), epochs - int(epochs)
    callbacks = list(callbacks)
    if whole:
        model.fit(x, y, batch_size=None if y is None else batch_size, epochs=whole, verbose=verbose,
                  callbacks=callbacks)
    if part <= 0:
        return
    if y is None:
        steps = int(tf.data.experimental.cardinality(x))
        if steps < 0:
            raise ValueError("a fractional number of epochs needs arrays or a dataset of known length. "
                             f"Received: epochs={epochs}")
        model.fit(x.take(max(1, int(steps * part))), epochs=1, verbose=verbose, callbacks=callbacks)
        return
    n = max(batch_size, int(len(x) * part))
    rows = slice(None, n) if seed is None else np.random.default_rng(seed).permutation(len(x))[:n]
    model.fit(np.asarray(x)[rows], np.asarray(y)[rows], batch_size=batch_size, epochs=1, verbose=verbose,
              callbacks=callbacks)
