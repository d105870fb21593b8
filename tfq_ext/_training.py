"""Fine-tuning helper shared by the methods: ``model.fit`` for a whole or fractional number of epochs."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tfq_ext._keras import keras, tf

__all__ = ["DistillationLoss", "distillation_targets", "fit_epochs"]


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


def distillation_targets(teacher, x, y, *, from_logits: bool = True, batch_size: int = 256) -> np.ndarray:
    """Training targets for :class:`DistillationLoss`: ``[label, teacher log-probabilities...]`` per example.

    Args:
        teacher: the float model (a classifier with outputs of shape ``(batch, classes)``).
        x, y: training arrays; ``y`` holds integer class labels.
        from_logits: True when ``teacher`` outputs logits, False when it outputs probabilities.
        batch_size: of the teacher's ``predict``.

    Returns:
        float32 array of shape ``(len(x), 1 + classes)``.
    """
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"`y` must hold one label per example of `x`. Received: {len(y)} labels for {len(x)} examples")
    scores = np.asarray(teacher.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError("distillation needs a teacher whose output has shape (batch, classes). Received: output "
                         f"shape {scores.shape[1:]}")
    if from_logits:
        scores = scores - scores.max(axis=1, keepdims=True)
        log_probs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    else:
        log_probs = np.log(np.clip(scores, 1e-12, None))
    return np.concatenate([y[:, None].astype(np.float64), log_probs], axis=1).astype(np.float32)


@keras.utils.register_keras_serializable(package="tfq_ext")
class DistillationLoss(keras.losses.Loss):
    """Cross-entropy with the labels blended with knowledge distillation from a float teacher (Hinton et al.).

    ``y_true`` is what :func:`distillation_targets` returns: the integer label in column 0, the teacher's
    log-probabilities after it. The loss is ``alpha * CE(label, student) + (1 - alpha) * T^2 *
    KL(softmax(teacher / T) || softmax(student / T))``, per example.

    Args:
        from_logits: True when the student outputs logits, False for probabilities.
        alpha: weight of the label cross-entropy, in [0, 1].
        temperature: T > 0, softening both distributions in the distillation term.
    """

    def __init__(self, from_logits: bool = True, alpha: float = 0.5, temperature: float = 2.0,
                 name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be a number in [0, 1]. Received: alpha={alpha!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"`temperature` must be a number > 0. Received: temperature={temperature!r}")
        self.from_logits = bool(from_logits)
        self.alpha = float(alpha)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        labels = tf.cast(y_true[:, 0], tf.int32)
        teacher = y_true[:, 1:]
        student = y_pred if self.from_logits else tf.math.log(tf.clip_by_value(y_pred, 1e-12, 1.0))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=student)
        t = self.temperature
        teacher_t = tf.nn.log_softmax(teacher / t, axis=-1)
        student_t = tf.nn.log_softmax(student / t, axis=-1)
        kl = tf.reduce_sum(tf.exp(teacher_t) * (teacher_t - student_t), axis=-1)
        return self.alpha * ce + (1.0 - self.alpha) * (t * t) * kl

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "alpha": self.alpha,
                "temperature": self.temperature}
