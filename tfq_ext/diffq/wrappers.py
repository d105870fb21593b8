"""Keras wrappers that quantize chosen weights of any layer: DiffQ (learned bits) and the uniform QAT baseline.

A wrapper computes a replacement tensor for each target weight (noisy in training, truly quantized at inference)
and runs the wrapped layer's own ``call`` with its weight attributes pointing at those tensors for the duration
of the call; the variables themselves are never written. Targets are attribute paths from the wrapped layer,
e.g. ``"kernel"``, ``"embeddings"`` or ``"cell.recurrent_kernel"`` (LSTM), so the same wrapper serves Dense,
Conv, Embedding, recurrent and custom layers, as long as they read their weights from attributes in ``call``
(every built-in layer does).

DiffQ forward (training): w + Delta(b) * xi; (inference): dequantize(quantize(w, round(b))) on the grid.
DiffQ backward: exact gradients to w and to the bits logits; the size penalty adds d(penalty * MB)/db.
Uniform forward: fake quantization on 2^bits levels over the tensor's range; backward: straight-through.

References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Dict, List, Optional, Sequence

import numpy as np

from tfq_ext._compat import resolve_training, smart_cond
from tfq_ext._keras import keras, tf
from tfq_ext.ops import diffq as ops
from tfq_ext.ops.size import TensorSize, packed_bytes

__all__ = ["DiffQWrapper", "UniformQuantWrapper", "KERNEL_ATTRS", "weight_paths", "LOGITS_SUFFIX"]

KERNEL_ATTRS = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings", "recurrent_kernel")
LOGITS_SUFFIX = "diffq_bits_logits"  # DiffQOptimizer routes variables whose name contains this to its own Adam
_MB = float(2 ** 20)


def weight_paths(layer: keras.layers.Layer) -> Dict[str, tf.Variable]:
    """Attribute path -> variable for every variable held by ``layer`` or by its sublayers' attributes."""
    found: Dict[str, tf.Variable] = {}
    seen = set()

    def walk(obj, prefix):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for name, value in list(vars(obj).items()):
            if isinstance(value, tf.Variable):
                if not any(value is v for v in found.values()):
                    found[prefix + name] = value
            elif isinstance(value, keras.layers.Layer):
                walk(value, prefix + name + ".")

    walk(layer, "")
    return found


def _resolve(root, path: str):
    owner = root
    *parents, attr = path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    return owner, attr


@contextlib.contextmanager
def _swapped(root, values: Dict[str, tf.Tensor]):
    """Points the layer's weight attributes at ``values`` for the duration of a call, then restores them.

    ``object.__setattr__`` bypasses Keras' attribute tracking: assigning through the layer would untrack the
    variable (its reference count drops to zero) and drop it from the layer's weights.
    """
    saved = []
    try:
        for path, value in values.items():
            owner, attr = _resolve(root, path)
            saved.append((owner, attr, vars(owner)[attr]))
            object.__setattr__(owner, attr, value)
        yield
    finally:
        for owner, attr, original in reversed(saved):
            object.__setattr__(owner, attr, original)


def _check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int. Received: {name}={value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"`{name}` must be {bounds}. Received: {name}={value}")
    return int(value)


class _QuantWrapper(keras.layers.Wrapper):
    """Base of the weight-quantizing wrappers; subclasses fill in the four hooks below."""

    def __init__(self, layer, targets: Optional[Sequence[str]] = None, **kwargs):
        if not isinstance(layer, keras.layers.Layer) or isinstance(layer, _QuantWrapper):
            raise TypeError(f"`layer` must be a tf_keras Layer that is not already a quantization wrapper. "
                            f"Received: layer={layer!r}")
        if targets is not None and (isinstance(targets, str) or not all(isinstance(t, str) for t in targets)):
            raise TypeError(f"`targets` must be a list of attribute paths such as ['kernel'] or None. "
                            f"Received: targets={targets!r}")
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.targets = None if targets is None else list(targets)
        # The constructor argument, returned by get_config; ``targets`` becomes the resolved list in build.
        object.__setattr__(self, "_requested_targets", None if targets is None else list(targets))
        self.supports_masking = getattr(layer, "supports_masking", False)
        params = inspect.signature(layer.call).parameters
        self._passes_training = "training" in params
        self._passes_mask = "mask" in params

    # Hooks -------------------------------------------------------------------------------------------------
    def _build_target(self, path: str, variable: tf.Variable) -> None:
        """Creates the state of one target weight (called once per target in ``build``)."""

    def _training_weight(self, path: str, w: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def _inference_weight(self, path: str, w: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def _target_size(self, path: str, variable: tf.Variable) -> TensorSize:
        raise NotImplementedError

    # Keras -------------------------------------------------------------------------------------------------
    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
            self.layer.built = True
        paths = weight_paths(self.layer)
        trainable = list(self.layer.trainable_weights)
        if self.targets is None:
            self.targets = [p for p in paths if p.split(".")[-1] in KERNEL_ATTRS]
            if not self.targets:
                raise ValueError(f"layer {self.layer.name!r} ({type(self.layer).__name__}) has no kernel-like "
                                 f"weight {KERNEL_ATTRS}; name the weights to quantize with `targets`. "
                                 f"Available: {sorted(paths)}")
        for path in self.targets:
            if path not in paths:
                raise ValueError(f"`targets` names {path!r}, which is not a weight attribute of layer "
                                 f"{self.layer.name!r} after it is built. Available: {sorted(paths)}. Layers that "
                                 f"create weights inside call (e.g. MultiHeadAttention) cannot be wrapped.")
            if not any(paths[path] is v for v in trainable):
                raise ValueError(f"target {path!r} of layer {self.layer.name!r} is not a trainable weight. "
                                 f"Received: targets={self.targets}")
            self._build_target(path, paths[path])
        super().build(input_shape)

    def _variable(self, path: str) -> tf.Variable:
        owner, attr = _resolve(self.layer, path)
        return vars(owner)[attr]

    def quantized_weights(self, training: bool = False) -> Dict[str, tf.Tensor]:
        """Target path -> the tensor the layer computes with (noisy when ``training``, quantized otherwise)."""
        make = self._training_weight if training else self._inference_weight
        return {p: make(p, tf.convert_to_tensor(self._variable(p))) for p in self.targets}

    def call(self, inputs, training=None, mask=None, **kwargs):
        training = resolve_training(training)
        values = {}
        for path in self.targets:
            w = tf.convert_to_tensor(self._variable(path))
            values[path] = smart_cond(training, lambda p=path, w=w: self._training_weight(p, w),
                                      lambda p=path, w=w: self._inference_weight(p, w))
        if self._passes_training:
            kwargs["training"] = training
        if self._passes_mask and mask is not None:
            kwargs["mask"] = mask
        with _swapped(self.layer, values):
            return self.layer.call(inputs, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def size_entries(self) -> List[TensorSize]:
        """Storage of every weight of the wrapped layer (quantized targets packed, the rest float32)."""
        entries = []
        targets = {id(self._variable(p)): p for p in self.targets}
        for path, variable in weight_paths(self.layer).items():
            if id(variable) in targets:
                entries.append(self._target_size(path, variable))
            else:
                n = int(np.prod(variable.shape))
                entries.append(TensorSize(self.layer.name, path, n, "float32", other_bytes=4 * n))
        return entries

    def get_config(self):
        return {**super().get_config(), "targets": self._requested_targets}


@keras.utils.register_keras_serializable(package="tfq_ext")
class DiffQWrapper(_QuantWrapper):
    """DiffQ on chosen weights of ``layer``: a learned number of bits per group of ``group_size`` weights.

    The size penalty is a regularization loss (``layer.losses``, summed into the loss by ``model.fit``):
    penalty * estimated megabytes (2^20 bytes) of this layer's quantized weights. Train the bits logits with
    :class:`tfq_ext.diffq.DiffQOptimizer` to give them their own Adam.

    Args:
        layer: the layer to wrap (built or not); the wrapper takes its name.
        targets: attribute paths of the weights to quantize; None: every kernel-like weight (``KERNEL_ATTRS``).
        group_size: consecutive weights (row-major) sharing one bits value; must divide each target's size.
        min_bits, max_bits: range of the learned bits (1 <= min_bits < max_bits <= 15).
        init_bits: initial bits, strictly between min_bits and max_bits.
        noise: "gaussian" (N(0, 1) / 2, reference default) or "uniform" (U(-1/2, 1/2), the paper).
        grid: levels of true quantization: "range" (min + k * Delta, the reference's; 0 is in general not a
            level) or "zero" (shifted so that 0 is a level, same storage; see the benchmark for its effect).
        penalty: weight of the size term, per megabyte; change it later with :func:`tfq_ext.diffq.set_penalty`.
        frozen: bits fixed at their rounded values, training on the true grid (see
            :func:`tfq_ext.diffq.freeze_bits`, which sets it on a trained model).

    Forward (training): w + (max(w) - min(w)) / (2^b - 1) * xi; (inference): true quantization with round(b).
    Backward: exact gradient of the noisy forward to w and to the logits; plus penalty * size gradient.
    Frozen: training forward = the inference weights, backward straight-through to w; the logits are
    non-trainable weights then (no gradient from the task loss or the penalty, no optimizer update), so the
    rounded bits and the size stay fixed.

    References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987.
    """

    def __init__(self, layer, targets=None, group_size: int = 8, min_bits: float = 2, max_bits: float = 15,
                 init_bits: float = 8, noise: str = "gaussian", grid: str = "range", penalty: float = 0.0,
                 frozen: bool = False, **kwargs):
        _check_int("group_size", group_size, 1)
        ops.check_bits_config(min_bits, max_bits, init_bits)
        if noise not in ops.NOISE_FORMS:
            raise ValueError(f"`noise` must be one of {ops.NOISE_FORMS}. Received: noise={noise!r}")
        if grid not in ops.GRIDS:
            raise ValueError(f"`grid` must be one of {ops.GRIDS}. Received: grid={grid!r}")
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or penalty < 0:
            raise ValueError(f"`penalty` must be a number >= 0. Received: penalty={penalty!r}")
        if not isinstance(frozen, bool):
            raise TypeError(f"`frozen` must be True or False. Received: frozen={frozen!r}")
        super().__init__(layer, targets, **kwargs)
        self.group_size = int(group_size)
        self.min_bits, self.max_bits, self.init_bits = min_bits, max_bits, init_bits
        self.noise = noise
        self.grid = grid
        self.penalty = float(penalty)
        self.frozen = frozen
        # Plain dict set past Keras' tracking: the variables are already the layer's own weights (add_weight).
        object.__setattr__(self, "_logits", {})

    def _build_target(self, path, variable):
        n = int(np.prod(variable.shape))
        if n % self.group_size:
            raise ValueError(f"`group_size`={self.group_size} does not divide the {n} weights of "
                             f"{self.layer.name}/{path} (shape {tuple(variable.shape)}). Choose a group_size "
                             f"that divides it or exclude the layer.")
        init = ops.logit_for_bits(self.init_bits, self.min_bits, self.max_bits)
        self._logits[path] = self.add_weight(
            f"{path.replace('.', '_')}_{LOGITS_SUFFIX}", shape=(n // self.group_size,), dtype=tf.float32,
            initializer=keras.initializers.Constant(init), trainable=True)

    def build(self, input_shape=None):
        self.penalty_weight = self.add_weight("diffq_penalty", shape=(), dtype=tf.float32, trainable=False,
                                              initializer=keras.initializers.Constant(self.penalty))
        super().build(input_shape)
        # A callable loss (like kernel regularizers) counts a shared layer once, however often it is called.
        self.add_loss(self._size_penalty)

    # Frozen bits logits are non-trainable weights (no gradient is computed for them, no optimizer touches them);
    # ``weights`` keeps its order, so get_weights / set_weights and saved files do not depend on the flag.
    def _frozen_logits(self):
        return [v for v in getattr(self, "_logits", {}).values()] if getattr(self, "frozen", False) else []

    @property
    def trainable_weights(self):
        frozen = self._frozen_logits()
        return [w for w in super().trainable_weights if not any(w is f for f in frozen)]

    @property
    def non_trainable_weights(self):
        weights = super().non_trainable_weights
        extra = [f for f in self._frozen_logits() if not any(f is w for w in weights)]
        return extra + weights

    @property
    def weights(self):
        return keras.layers.Layer.trainable_weights.fget(self) + keras.layers.Layer.non_trainable_weights.fget(self)

    def bits(self, path: Optional[str] = None) -> tf.Tensor:
        """Real-valued bits of one target (the first if ``path`` is None), shape (n_groups,)."""
        logits = self._logits[path if path is not None else self.targets[0]]
        return ops.bits_from_logits(logits, self.min_bits, self.max_bits)

    def rounded_bits(self) -> Dict[str, np.ndarray]:
        """Target path -> the integer bits per group that true quantization uses."""
        return {p: ops.round_bits(self.bits(p)).numpy().astype(np.int32) for p in self.targets}

    def _training_weight(self, path, w):
        if self.frozen:
            return ops.quantize_dequantize_ste(w, tf.stop_gradient(self.bits(path)), self.group_size, self.grid)
        return ops.pseudo_quant_noise(w, self.bits(path), self.group_size, self.noise)

    def _inference_weight(self, path, w):
        return ops.quantize_dequantize(w, self.bits(path), self.group_size, self.grid)

    def estimated_bytes(self) -> tf.Tensor:
        """Differentiable size in bytes of this layer's quantized weights (the float32 rest is constant)."""
        return tf.add_n([ops.size_bits(self.bits(p), self.group_size) for p in self.targets]) / 8.0

    def _size_penalty(self):
        size = self.estimated_bytes()
        if self.frozen:  # the bits no longer move: the term is a constant that carries no gradient
            size = tf.stop_gradient(size)
        return self.penalty_weight * size / _MB

    def _target_size(self, path, variable):
        bits = ops.round_bits(self.bits(path)).numpy().astype(np.int64)
        codes = (self.group_size * int(bits.sum()) + 7) // 8
        field = packed_bytes(bits.size, ops.bits_field_width(bits))
        return TensorSize(self.layer.name, path, int(np.prod(variable.shape)), "diffq", index_bytes=codes,
                          codebook_bytes=ops.RANGE_BYTES, other_bytes=ops.HEADER_BYTES + field)

    def get_config(self):
        return {**super().get_config(), "group_size": self.group_size, "min_bits": self.min_bits,
                "max_bits": self.max_bits, "init_bits": self.init_bits, "noise": self.noise,
                "grid": self.grid, "penalty": self.penalty, "frozen": self.frozen}


@keras.utils.register_keras_serializable(package="tfq_ext")
class UniformQuantWrapper(_QuantWrapper):
    """Uniform quantization of chosen weights at a fixed ``bits``: QAT when trained, PTQ when only evaluated.

    The baseline DiffQ is compared with (the reference's ``UniformQuantizer(qat=True)``), with the same size
    accounting: packed codes at ``bits`` bits plus the tensor's float32 range.

    Args:
        layer, targets: as :class:`DiffQWrapper`.
        bits: bits of every weight, in [2, 15].

    Forward: per-tensor fake quantization over [min, max] (nudged to contain 0) on 2^bits levels, training and
    inference alike. Backward: straight-through estimator (zero where a code saturates).

    References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987 (baseline); Bengio et al. 2013, arXiv 1308.3432.
    """

    def __init__(self, layer, targets=None, bits: int = 8, **kwargs):
        self.bits = _check_int("bits", bits, 2, ops.BITS_LIMITS[1])
        super().__init__(layer, targets, **kwargs)

    def _training_weight(self, path, w):
        return ops.uniform_fake_quant(w, self.bits)

    _inference_weight = _training_weight

    def _target_size(self, path, variable):
        n = int(np.prod(variable.shape))
        return TensorSize(self.layer.name, path, n, f"uniform{self.bits}", index_bytes=packed_bytes(n, self.bits),
                          codebook_bytes=ops.RANGE_BYTES)

    def get_config(self):
        return {**super().get_config(), "bits": self.bits}
