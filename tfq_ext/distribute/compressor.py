"""The stateful AdaComp compressor: per-replica residuals, the sparse exchange, and its byte counters.

References:
    Chen et al., "AdaComp: Adaptive Residual Gradient Compression for Data-Parallel Distributed Training",
    AAAI 2018, arXiv 1712.02679.
"""

from __future__ import annotations

import math
import re

import numpy as np

from tfq_ext._keras import tf
from tfq_ext.ops import adacomp as ops

__all__ = ["DEFAULT_BIN_SIZES", "PRECONDITIONERS", "AdaComp", "TopK", "check_strategy"]

#: The paper's bin lengths: about 50 for conv kernels and 500 for fully-connected / recurrent matrices.
#: Biases and normalization parameters are tiny; they use the conv length.
DEFAULT_BIN_SIZES = {"conv": 50, "fc": 500, "other": 50}
#: ``AdaComp(precondition=...)``: None (the paper's rule), "rms" (per-learner Adam second-moment scaling),
#: "momentum" (per-learner momentum before the residual, with momentum factor masking) or "adam" (both: each
#: learner's Adam direction goes into the residual).
PRECONDITIONERS = (None, "rms", "momentum", "adam")
_RMS = ("rms", "adam")
_VELOCITY = ("momentum", "adam")

# get_strategy() outside any scope returns the process-wide default strategy object (one replica).
_DEFAULT_STRATEGY = None if tf.distribute.has_strategy() else tf.distribute.get_strategy()
_SUPPORTED = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy,
              tf.distribute.OneDeviceStrategy)
# Layout of the float64 counter vector: steps, wire bytes, dense bytes, last step's wire bytes, then per
# layer kind: elements, sent elements, encoded bits.
_STEPS, _WIRE, _DENSE, _LAST = 0, 1, 2, 3
_KIND_BASE = 4


def check_strategy(strategy) -> None:
    """Raises unless ``strategy`` is one AdaComp can exchange sparse updates with.

    Supported: the default (no) strategy, ``OneDeviceStrategy``, ``MirroredStrategy`` and
    ``MultiWorkerMirroredStrategy``: all keep one full copy of the weights per replica and offer
    ``ReplicaContext.all_gather``. Parameter-server and central-storage strategies aggregate on other devices.
    """
    if strategy is _DEFAULT_STRATEGY or isinstance(strategy, _SUPPORTED):
        return
    raise TypeError(
        "AdaComp exchanges sparse gradients with the all-gather collective of a replicated strategy; it supports "
        "no strategy, OneDeviceStrategy, MirroredStrategy and MultiWorkerMirroredStrategy. Create the optimizer "
        f"inside one of those scopes. Received: strategy={type(strategy).__name__}")


def _local_variable(name: str, shape, dtype):
    """A zero-initialised per-replica (sync-on-read, not aggregated) state variable, created outside any graph."""
    with tf.init_scope():
        return tf.Variable(tf.zeros(shape, dtype), trainable=False, name=name,
                           synchronization=tf.VariableSynchronization.ON_READ,
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def _components(variable):
    """The local per-replica component variables of a (possibly distributed) variable."""
    return tuple(getattr(variable, "values", (variable,)))


class _Residual(tf.__internal__.tracking.Trackable):
    """Checkpoints one layer's residuals: all local replicas' values, stacked (a plain sync-on-read variable
    would save only the first replica's value and restore it into every replica)."""

    def __init__(self, variable, statistic: bool = False):
        self.variable = variable
        self.statistic = statistic  # a per-replica statistic (second moment, step count), not gradient mass

    def _serialize_to_tensors(self):
        return {"per_replica": tf.stack([c.read_value() for c in _components(self.variable)])}

    def _restore_from_tensors(self, restored_tensors):
        value = restored_tensors["per_replica"]
        components = _components(self.variable)
        if value.shape[0] != len(components):
            # A different number of local replicas: spread the total residual mass evenly, so none is lost
            # (a statistic is averaged instead).
            total = tf.reduce_sum(value, 0, keepdims=True)
            share = total / (value.shape[0] if self.statistic else len(components))
            value = tf.repeat(share, len(components), 0)
        return tf.group([c.assign(value[i]) for i, c in enumerate(components)])


class AdaComp(tf.Module):
    """AdaComp: per-learner residual gradient compression with a self-adjusting rate per bin.

    Forward rule per layer and learner: ``G += dW`` (``G += dW / (sqrt(v_hat) + eps)`` with
    ``precondition="rms"``, see below); send ``sign(G_i) * scale`` where
    ``|G_i + dW_i| >= max_{bin(i)} |G|`` (bins of ``L_T`` elements); ``G -= sent``. The sparse updates of all
    learners are all-gathered as int32 ``sign * (index + 1)`` entries plus one count and one scale per layer,
    and summed; the optimizer steps on the sum.

    Use it through :func:`tfq_ext.distribute.with_adacomp`. Residuals are per replica and saved in checkpoints
    (``tf.train.Checkpoint(model=..., optimizer=...)`` or ``model.save_weights``) so a restarted job loses no
    gradient mass.

    Args:
        bin_sizes: ``L_T`` per layer kind (``"conv"``, ``"fc"``, ``"other"``); an int applies to all kinds and
            a dict overrides :data:`DEFAULT_BIN_SIZES`.
        residual: keep the unsent gradient (AdaComp). ``False`` is the no-residual ablation: unsent values are
            dropped.
        quantize: send ``sign x one scale per layer`` (AdaComp). ``False`` is the exact-values ablation: the same
            elements are sent with their own float32 value (32 more bits each on the wire, counted).
        precondition: None (the paper), ``"rms"``, ``"momentum"`` or ``"adam"``. ``"rms"``: each learner divides
            its own dense gradient by the root of its running second moment (Adam's ``v``:
            ``v = beta_2 v + (1 - beta_2) dW^2``, bias-corrected) before the residual, and the exchange returns
            the mean of the learners' preconditioned updates. Pair it with ``SGD(momentum=0.9)`` at about Adam's
            rate x (1 - momentum): that is Adam's update with the compression between the preconditioner and the
            momentum. The idea: the optimizer sees an element only when it is
            sent, as one spike of the gradient accumulated since the last send, and Adam divides that spike by the
            root of its own mean square, so an element sent every N steps would move about sqrt(N) times less
            than under dense Adam. Measured on the Shakespeare LSTM (``benchmarks/adacomp_lm.py``): no better than
            AdaComp under plain Adam (+0.247 vs +0.227 bpc from dense Adam), so that is not where AdaComp loses
            there; kept as an option and an ablation. Costs one more float per weight per learner.
            ``"momentum"``: each learner keeps its own velocity ``u = momentum * u + dW`` and the residual
            accumulates ``u`` instead of ``dW``; where an element is sent, its velocity is reset to 0 (momentum
            correction and momentum factor masking, Lin et al. 2018, arXiv 1712.01887). Pair it with plain
            ``SGD`` (no momentum) at the dense SGD-momentum rate: the momentum then acts on each learner's
            dense gradient, not on the sparse sum, where a late send of an old residual would keep pushing for
            ~1 / (1 - momentum) steps after it arrived. Costs one more float per weight per learner.
            ``"adam"``: both, in Adam's order: the velocity accumulates the ``"rms"``-scaled gradient, so each
            learner's own Adam direction goes into the residual. Pair it with plain ``SGD`` at Adam's rate x
            (1 - momentum) and no clipping (the update is unit-scale). Two more floats per weight per learner.
        beta_2, epsilon: the second-moment decay and the denominator's epsilon for ``precondition="rms"`` or
            ``"adam"``.
        momentum: the velocity's decay for ``precondition="momentum"`` or ``"adam"``, in [0, 1).
        name: module name.

    References:
        arXiv 1712.02679.
    """

    def __init__(self, bin_sizes=None, *, residual: bool = True, quantize: bool = True, precondition=None,
                 beta_2: float = 0.999, epsilon: float = 1e-7, momentum: float = 0.9, name: str = "adacomp"):
        super().__init__(name=name)
        if not isinstance(residual, bool):
            raise TypeError(f"`residual` must be a bool. Received: residual={residual!r}")
        if not isinstance(quantize, bool):
            raise TypeError(f"`quantize` must be a bool. Received: quantize={quantize!r}")
        if precondition not in PRECONDITIONERS:
            raise ValueError(f"`precondition` must be one of {PRECONDITIONERS}. Received: precondition={precondition!r}")
        if isinstance(beta_2, bool) or not isinstance(beta_2, (int, float)) or not 0.0 < beta_2 < 1.0:
            raise ValueError(f"`beta_2` must be a number in (0, 1). Received: beta_2={beta_2!r}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0.0:
            raise ValueError(f"`epsilon` must be a positive number. Received: epsilon={epsilon!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be a number in [0, 1). Received: momentum={momentum!r}")
        self.bin_sizes = _normalize_bin_sizes(bin_sizes)
        self.residual = residual
        self.quantize = quantize
        self.precondition = precondition
        self.beta_2, self.epsilon, self.momentum = float(beta_2), float(epsilon), float(momentum)
        self._slots = {}
        self._moments = {}
        self._velocities = {}
        self._state = None  # variables that are not checkpointed live in a plain (untracked) holder

    def get_config(self) -> dict:
        return {"bin_sizes": dict(self.bin_sizes), "residual": self.residual, "quantize": self.quantize,
                "precondition": self.precondition,
                "beta_2": self.beta_2, "epsilon": self.epsilon, "momentum": self.momentum, "name": self.name}

    # -- hooks --------------------------------------------------------------------------------------------
    def select(self, accumulated: tf.Tensor, grad: tf.Tensor, kind: str) -> tf.Tensor:
        """Which elements of the flat accumulated residual to send (AdaComp's per-bin rule)."""
        return ops.adacomp_mask(accumulated, grad, self.bin_sizes[kind])

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self._state is not None

    def build(self, var_list) -> None:
        """Creates the per-replica residuals (zeros) and counters; call in cross-replica context."""
        if self.built:
            return
        var_list = list(var_list)
        names = set()
        self._layers = []
        for var in var_list:
            key = re.sub(r"[^0-9A-Za-z_]", "_", var.name.split(":")[0])
            while key in names:
                key += "_"
            names.add(key)
            n = int(np.prod(var.shape))
            self._layers.append((key, n, ops.layer_kind(var.shape)))
            if self.residual:
                self._slots[key] = _Residual(_local_variable(f"adacomp_residual/{key}", [n], var.dtype))
            if self.precondition in _VELOCITY:
                self._velocities[key] = _Residual(_local_variable(f"adacomp_velocity/{key}", [n], var.dtype),
                                                  statistic=True)
            if self.precondition in _RMS:
                self._moments[key] = _Residual(_local_variable(f"adacomp_second_moment/{key}", [n], var.dtype),
                                               statistic=True)
        if self.precondition in _RMS:
            self._moment_steps = _Residual(_local_variable("adacomp_moment_steps", [1], tf.float32), statistic=True)
        counters = _local_variable("adacomp_counters", [_KIND_BASE + 3 * len(ops.LAYER_KINDS)], tf.float64)
        self._state = _Holder(var_ids={id(v): i for i, v in enumerate(var_list)},
                              var_names={v.name: i for i, v in enumerate(var_list)}, counters=counters)

    def residual_values(self) -> dict:
        """``{layer key: array [local replicas, n]}`` of the current residuals (for tests and inspection)."""
        return {k: np.stack([c.numpy() for c in _components(s.variable)]) for k, s in self._slots.items()}

    # -- the exchange -----------------------------------------------------------------------------------
    def exchange(self, grads_and_vars, clip=None):
        """Compresses this replica's gradients, all-gathers the sparse updates and returns their sum.

        Must run in replica context (as ``Optimizer.aggregate_gradients`` does inside ``model.fit``).
        ``clip``: the optimizer's ``{"clipnorm" | "global_clipnorm" | "clipvalue": threshold}``, applied to this
        replica's gradient at threshold / replicas before the residual (so the sum of aligned gradients is clipped
        as the dense sum would be, and nothing already in the residual is clipped away later).

        Returns:
            A list of ``(summed gradient, variable)`` pairs, identical on every replica.
        """
        ctx = tf.distribute.get_replica_context()
        if ctx is None:
            raise RuntimeError("AdaComp.exchange must be called in replica context (inside strategy.run or "
                               "Optimizer.apply_gradients); it was called in cross-replica context.")
        grads_and_vars = list(grads_and_vars)
        live = [(g, v) for g, v in grads_and_vars if g is not None]
        if not self.built:
            variables = [v for _, v in live]
            ctx.merge_call(lambda strategy: self._build_in(strategy, variables))
        if clip:
            live = list(zip(_clip_local(clip, [tf.convert_to_tensor(g) for g, _ in live], ctx.num_replicas_in_sync),
                            [v for _, v in live]))
        layers, packed, counts, scales = [], [], [], []
        correction = None
        if self.precondition in _RMS:
            steps = self._moment_steps.variable
            t = steps.read_value() + 1.0
            steps.assign(t)
            correction = 1.0 - tf.pow(self.beta_2, t[0])  # Adam's bias correction of v
        for grad, var in live:
            key, n, kind = self._layers[self._layer_index(var)]
            flat = tf.reshape(tf.convert_to_tensor(grad), [-1])
            if correction is not None:
                moment = self._moments[key].variable
                v = self.beta_2 * moment.read_value() + (1.0 - self.beta_2) * tf.square(flat)
                moment.assign(v)
                flat = flat / (tf.sqrt(v / tf.cast(correction, v.dtype)) + self.epsilon)
            velocity = self._velocities.get(key)
            if velocity is not None:
                flat = self.momentum * velocity.variable.read_value() + flat
            slot = self._slots.get(key)
            previous = slot.variable.read_value() if slot is not None else tf.zeros_like(flat)
            accumulated = previous + flat
            mask = self.select(accumulated, flat, kind)
            if self.quantize:
                sent, scale = ops.quantize_sent(accumulated, mask)
                scale = tf.cast(scale, tf.float32)
            else:
                sent = tf.where(mask, accumulated, tf.zeros_like(accumulated))
                scale = tf.cast(tf.abs(tf.boolean_mask(accumulated, mask)), tf.float32)  # one per sent entry
            if slot is not None:
                slot.variable.assign(accumulated - sent)
            if velocity is not None:  # momentum factor masking: a sent element starts its velocity again
                velocity.variable.assign(tf.where(mask, tf.zeros_like(flat), flat))
            layers.append((n, kind, var, grad))
            packed.append(ops.encode_sparse(accumulated, mask))
            counts.append(tf.reduce_sum(tf.cast(mask, tf.int32)))
            scales.append(scale)
        if not layers:
            return grads_and_vars
        summed = self._all_gather_sum(ctx, layers, packed, counts, scales)
        if self.precondition in _RMS:
            # The learners' preconditioned updates are each of unit scale: their mean is the update direction.
            summed = [s / float(ctx.num_replicas_in_sync) for s in summed]
        by_var = {id(var): s for (_, _, var, _), s in zip(layers, summed)}
        return [(by_var.get(id(v), g), v) for g, v in grads_and_vars]

    def _layer_index(self, var) -> int:
        index = self._state.var_ids.get(id(var))
        if index is None:
            # build() may have been called with other wrapper objects of the same variables: match by name.
            index = self._state.var_names.get(var.name)
        if index is None:
            raise ValueError(f"AdaComp was built for other variables; got a gradient for {var.name!r}. Use one "
                             "compressor per optimizer and model.")
        return index

    def _build_in(self, strategy, variables):
        with strategy.scope():
            self.build(variables)

    def _all_gather_sum(self, ctx, layers, packed, counts, scales):
        n_layers = len(layers)
        replicas = ctx.num_replicas_in_sync
        # Two collectives per step for the whole model: a header (counts, float32 scales as int32 bits) and the
        # concatenated entries. all_gather accepts a different length per replica on axis 0.
        if self.quantize:
            header = tf.concat([tf.stack(counts), tf.bitcast(tf.stack(scales), tf.int32)], 0)
            headers = tf.reshape(ctx.all_gather(header, axis=0), [replicas, 2 * n_layers])
            all_counts = headers[:, :n_layers]
            all_scales = tf.reshape(tf.bitcast(headers[:, n_layers:], tf.float32), [-1])
        else:  # exact values: one float32 magnitude per entry, gathered like the entries
            all_counts = tf.reshape(ctx.all_gather(tf.stack(counts), axis=0), [replicas, n_layers])
            magnitudes = ctx.all_gather(tf.concat(scales, 0), axis=0)
        body = ctx.all_gather(tf.concat(packed, 0), axis=0)
        segment = tf.repeat(tf.range(replicas * n_layers), tf.reshape(all_counts, [-1]))
        parts = tf.dynamic_partition(body, segment % n_layers, n_layers)
        per_entry = tf.gather(all_scales, segment) if self.quantize else magnitudes
        part_scales = tf.dynamic_partition(per_entry, segment % n_layers, n_layers)
        summed = []
        for i, (n, _, var, grad) in enumerate(layers):
            dense = ops.decode_sparse_sum(parts[i], part_scales[i], n, var.dtype)
            summed.append(tf.reshape(dense, var.shape))
        self._count(layers, all_counts, n_layers)
        return summed

    def _count(self, layers, all_counts, n_layers):
        """Adds this step's traffic to the counters (identical on every replica: it uses gathered counts)."""
        counts = tf.cast(all_counts, tf.float64)
        replicas = tf.cast(tf.shape(all_counts)[0], tf.float64)
        # Per replica: the int32 header, and the entries padded to the longest replica's list (all_gather pads).
        per_entry = 4.0 if self.quantize else 8.0  # exact values: an int32 entry and a float32 value
        wire = 4.0 * 2 * n_layers + per_entry * tf.reduce_max(tf.reduce_sum(counts, 1))
        dense = 4.0 * float(sum(n for n, *_ in layers))
        delta = [tf.constant(1.0, tf.float64), wire, tf.constant(dense, tf.float64), tf.constant(0.0, tf.float64)]
        per_kind = {kind: [tf.constant(0.0, tf.float64)] * 3 for kind in ops.LAYER_KINDS}
        for i, (n, kind, _, _) in enumerate(layers):
            sent = tf.reduce_sum(counts[:, i])
            bits = sent * (ops.encoded_bits(1, n) - 32) + 32.0 * replicas
            if not self.quantize:
                bits = bits + 32.0 * sent
            elements, sent_total, bits_total = per_kind[kind]
            per_kind[kind] = [elements + replicas * n, sent_total + sent, bits_total + bits]
        for kind in ops.LAYER_KINDS:
            delta.extend(per_kind[kind])
        counters = self._state.counters
        update = tf.stack(delta)
        new = counters.read_value() + update
        # The "last step" slot is overwritten, not accumulated.
        new = tf.tensor_scatter_nd_update(new, [[_LAST]], tf.reshape(wire, [1]))
        counters.assign(new)

    def report(self) -> dict:
        """Totals since training started: steps, bytes per replica and step (wire and dense), and per layer
        kind the elements, sent elements, ratio of sent elements and compression with index bits counted."""
        if not self.built:
            return {"steps": 0}
        c = _components(self._state.counters)[0].numpy()
        out = {"steps": int(c[_STEPS]), "wire_bytes": float(c[_WIRE]), "dense_bytes": float(c[_DENSE]),
               "last_step_wire_bytes": float(c[_LAST])}
        steps = max(c[_STEPS], 1.0)
        out["wire_bytes_per_step"] = c[_WIRE] / steps
        out["dense_bytes_per_step"] = c[_DENSE] / steps
        out["wire_reduction"] = c[_DENSE] / c[_WIRE] if c[_WIRE] else math.nan
        for j, kind in enumerate(ops.LAYER_KINDS):
            elements, sent, bits = c[_KIND_BASE + 3 * j: _KIND_BASE + 3 * j + 3]
            if elements:
                out.update({f"{kind}_elements": elements, f"{kind}_sent": sent, f"{kind}_bits": bits})
                out[f"{kind}_sent_fraction"] = sent / elements
                out[f"{kind}_compression"] = 32.0 * elements / bits
        return out


class TopK(AdaComp):
    """Fixed-rate baseline: each learner sends the ``ceil(n / rate)`` largest ``|G|`` of each layer (with the
    same residual and sign x scale quantization as AdaComp).

    Args:
        rates: compression ratio per layer kind (elements per sent element), e.g. AdaComp's measured rates.
        residual: keep the unsent gradient.
        name: module name.

    References:
        arXiv 1712.02679 (the fixed-rate comparison).
    """

    def __init__(self, rates: dict, *, residual: bool = True, name: str = "topk"):
        super().__init__(residual=residual, name=name)
        if not isinstance(rates, dict) or set(rates) - set(ops.LAYER_KINDS):
            raise ValueError(f"`rates` must be a dict with keys among {ops.LAYER_KINDS}. Received: rates={rates!r}")
        for kind, rate in rates.items():
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate >= 1:
                raise ValueError(f"`rates[{kind!r}]` must be a number >= 1. Received: {rate!r}")
        self.rates = {kind: float(rates.get(kind, 1.0)) for kind in ops.LAYER_KINDS}

    def get_config(self) -> dict:
        return {"rates": dict(self.rates), "residual": self.residual, "name": self.name}

    def select(self, accumulated, grad, kind):
        n = int(accumulated.shape[0])
        return ops.topk_mask(accumulated, max(1, math.ceil(n / self.rates[kind])))


def _clip_local(clip: dict, grads, replicas: int):
    """tf_keras's clipping rule (clipnorm, else global_clipnorm, else clipvalue) at threshold / replicas."""
    unknown = set(clip) - {"clipnorm", "global_clipnorm", "clipvalue"}
    if unknown:
        raise ValueError(f"`clip` keys must be clipnorm, global_clipnorm or clipvalue. Received: {sorted(unknown)}")
    if clip.get("clipnorm"):
        return [tf.clip_by_norm(g, clip["clipnorm"] / replicas) for g in grads]
    if clip.get("global_clipnorm"):
        return tf.clip_by_global_norm(grads, clip["global_clipnorm"] / replicas)[0]
    if clip.get("clipvalue"):
        bound = clip["clipvalue"] / replicas
        return [tf.clip_by_value(g, -bound, bound) for g in grads]
    return grads


class _Holder:
    """A plain attribute bag: tf.Module does not track what it holds, so it is not checkpointed."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def _normalize_bin_sizes(bin_sizes) -> dict:
    if bin_sizes is None:
        return dict(DEFAULT_BIN_SIZES)
    if isinstance(bin_sizes, dict):
        unknown = set(bin_sizes) - set(ops.LAYER_KINDS)
        if unknown:
            raise ValueError(f"`bin_sizes` keys must be among {ops.LAYER_KINDS}. Received: bin_sizes={bin_sizes!r}")
        out = dict(DEFAULT_BIN_SIZES)
        out.update({k: ops.validate_bin_size(v, f"bin_sizes[{k!r}]") for k, v in bin_sizes.items()})
        return out
    size = ops.validate_bin_size(bin_sizes, "bin_sizes")
    return {kind: size for kind in ops.LAYER_KINDS}
