"""An optimizer wrapper that gives DiffQ's bits logits their own Adam, so ``model.fit`` needs no custom loop.

``model.compile(optimizer=DiffQOptimizer(keras.optimizers.SGD(0.1, weight_decay=5e-4)), ...)``: every variable
whose name contains ``diffq_bits_logits`` is updated by an Adam at ``bits_learning_rate`` without weight decay or
clipping (the reference's ``setup_optimizer``); all other variables by the wrapped optimizer, unchanged.

References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987.
"""

from __future__ import annotations

from tfq_ext._keras import keras, tf
from tfq_ext.diffq.wrappers import LOGITS_SUFFIX

__all__ = ["DiffQOptimizer", "is_bits_logits"]


def is_bits_logits(variable) -> bool:
    """Whether ``variable`` is a DiffQ bits-logits variable (routed to the bits optimizer)."""
    return LOGITS_SUFFIX in variable.name


class _CallableList(list):
    # Keras code written for the legacy optimizers calls ``optimizer.variables()``; the new API reads a list.
    def __call__(self):
        return self


@keras.utils.register_keras_serializable(package="tfq_ext")
class DiffQOptimizer(keras.optimizers.Optimizer):
    """Routes the bits logits to their own Adam and everything else to ``optimizer``.

    Args:
        optimizer: the model's optimizer (instance, name such as "sgd", or serialized config); tf_keras
            optimizers of the current API only (not ``keras.optimizers.legacy``).
        bits_learning_rate: Adam learning rate of the bits logits (reference default 1e-3), or a
            ``keras.optimizers.schedules.LearningRateSchedule`` (stepped once per training step), e.g. a cosine
            decay to 0 with the weights' schedule so that the bits settle before the weights do.
        name: the optimizer's name.

    ``learning_rate`` and ``iterations`` are those of ``optimizer`` (so LR schedules and callbacks act on the
    model's weights, never on the bits).

    Forward: none (an optimizer). Backward: bits logits <- Adam(bits_learning_rate) step on their gradient (task
    loss through the noise plus the size penalty); every other variable <- ``optimizer``'s own update.

    References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987 (reference ``setup_optimizer``).
    """

    def __init__(self, optimizer="adam", bits_learning_rate: float = 1e-3, name: str = "DiffQOptimizer"):
        inner = keras.optimizers.get(optimizer) if isinstance(optimizer, (str, dict)) else optimizer
        if not isinstance(inner, keras.optimizers.Optimizer) or isinstance(inner, DiffQOptimizer):
            raise TypeError(f"`optimizer` must be a tf_keras optimizer (keras.optimizers.Adam(...), 'sgd', ...), "
                            f"not a legacy one or a DiffQOptimizer. Received: optimizer={optimizer!r}")
        schedule = isinstance(bits_learning_rate, keras.optimizers.schedules.LearningRateSchedule)
        if not schedule and (isinstance(bits_learning_rate, bool) or not isinstance(bits_learning_rate, (int, float))
                             or not bits_learning_rate > 0):
            raise ValueError(f"`bits_learning_rate` must be a number > 0 or a learning-rate schedule. "
                             f"Received: bits_learning_rate={bits_learning_rate!r}")
        super().__init__(name=name)
        self._optimizer = inner
        self.bits_learning_rate = bits_learning_rate if schedule else float(bits_learning_rate)
        # The scope renames the Adam's "iteration" counter, which would clash with the wrapped optimizer's in an
        # HDF5 file (optimizer weights are stored by variable name).
        with tf.name_scope("diffq_bits"):
            self._bits_optimizer = keras.optimizers.Adam(self.bits_learning_rate, name="diffq_bits_adam")

    @property
    def optimizer(self):
        """The wrapped optimizer of the model's weights."""
        return self._optimizer

    @property
    def bits_optimizer(self):
        """The Adam of the bits logits."""
        return self._bits_optimizer

    @property
    def iterations(self):
        return self._optimizer.iterations

    @iterations.setter
    def iterations(self, variable):
        # Called once by the base class constructor; the count that matters is the wrapped optimizer's.
        if hasattr(self, "_optimizer"):
            self._optimizer.iterations = variable

    @property
    def learning_rate(self):
        return self._optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._optimizer.learning_rate = value

    def _split(self, items, key=lambda item: item):
        bits, rest = [], []
        for item in items:
            (bits if is_bits_logits(key(item)) else rest).append(item)
        return bits, rest

    def build(self, var_list):
        bits, rest = self._split(var_list)
        self._optimizer.build(rest)
        self._bits_optimizer.build(bits)
        self._built = True

    def update_step(self, gradient, variable):
        raise NotImplementedError("DiffQOptimizer delegates every update to its two optimizers")

    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False, **kwargs):
        # Missing gradients are dropped here: an optimizer given only (None, var) pairs raises.
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        bits, rest = self._split(pairs, key=lambda pair: pair[1])
        if bits:
            self._bits_optimizer.apply_gradients(bits, skip_gradients_aggregation=skip_gradients_aggregation,
                                                 **kwargs)
        if rest:
            return self._optimizer.apply_gradients(rest, skip_gradients_aggregation=skip_gradients_aggregation,
                                                   **kwargs)
        return self.iterations

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        self._optimizer.exclude_from_weight_decay(var_list, var_names)

    def finalize_variable_values(self, var_list):
        bits, rest = self._split(var_list)
        self._optimizer.finalize_variable_values(rest)
        self._bits_optimizer.finalize_variable_values(bits)

    @property
    def variables(self):
        return _CallableList(list(self._optimizer.variables) + list(self._bits_optimizer.variables))

    def set_weights(self, weights):
        n = len(self._optimizer.variables)
        self._optimizer.set_weights(weights[:n])
        self._bits_optimizer.set_weights(weights[n:])

    def get_config(self):
        rate = self.bits_learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = keras.optimizers.schedules.serialize(rate)
        return {"optimizer": keras.optimizers.serialize(self._optimizer), "bits_learning_rate": rate,
                "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["optimizer"] = keras.optimizers.deserialize(config["optimizer"], custom_objects=custom_objects)
        if isinstance(config.get("bits_learning_rate"), dict):
            config["bits_learning_rate"] = keras.optimizers.schedules.deserialize(
                config["bits_learning_rate"], custom_objects=custom_objects)
        return cls(**config)
