"""Running exported flatbuffers: interpreters, XNNPACK delegation report, batched inference, latency.

All interpreters come from ai_edge_litert (the maintained TFLite runtime), except those that need custom
kernels built against TensorFlow (see ``tfq_ext/_compat.py``).

Measured facts this module relies on (ai_edge_litert 2.3.0):

- The default op resolver applies XNNPACK during ``allocate_tensors()``. Afterwards the node list holds the
  original nodes at their original indices followed by one ``DELEGATE`` node per delegated partition, whose
  inputs and outputs are the partition's boundary tensors (constants included).
- Before ``allocate_tensors()`` the same interpreter lists only the original nodes, which gives their count.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tflite_export._graph import check_flatbuffer

__all__ = [
    "make_interpreter",
    "delegation_report",
    "run",
    "run_raw",
    "output_quantization",
    "measure_latency",
    "compare_latency",
]


def _check_int(value: Any, arg_name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{arg_name}` must be an integer >= {minimum}. Received: {arg_name}={value!r}")
    return int(value)


def make_interpreter(model_content: bytes, num_threads: int = 1, use_xnnpack: bool = True,
                     custom_op_registerers: Sequence[Any] | None = None, *, allocate: bool = True) -> Any:
    """Creates an interpreter for a flatbuffer, with or without the default XNNPACK delegate.

    Args:
        model_content: The TFLite flatbuffer.
        num_threads: CPU threads for the kernels and for XNNPACK.
        use_xnnpack: If True, the default op resolver applies XNNPACK automatically; if False, the
            ``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` resolver runs every node on the reference/optimized builtin
            kernels.
        custom_op_registerers: Names of registration functions (or the functions) for CUSTOM ops. Given, the
            interpreter is TensorFlow's ``InterpreterWithCustomOps``, whose op resolver is the one kernels
            linked against ``libtensorflow_cc`` register on.
        allocate: Call ``allocate_tensors()`` before returning (False keeps the undelegated node listing).

    Returns:
        The interpreter, tensors allocated unless ``allocate=False``.

    Raises:
        TypeError: ``model_content`` is not bytes.
        ValueError: ``model_content`` is not a TFLite flatbuffer, the interpreter cannot read it (also when its
            error message holds bytes that are not UTF-8), it is a compressed file that needs
            ``tflite_export.load_interpreter`` / ``decompress`` (the message says so), or ``num_threads`` < 1.
        RuntimeError: ``allocate_tensors()`` failed (e.g. a kernel's Prepare rejected its node).
    """
    content = check_flatbuffer(model_content, "model_content")
    num_threads = _check_int(num_threads, "num_threads", 1)
    try:
        interpreter = _create(content, num_threads, use_xnnpack, custom_op_registerers)
    except UnicodeDecodeError as exc:
        raise ValueError(f"`model_content` could not be loaded: {_message(exc)}") from None
    except (RuntimeError, ValueError) as exc:
        hint = _compressed_hint(content, custom_op_registerers)
        if hint:
            raise ValueError(f"`model_content` could not be loaded ({_oneline(exc)}): {hint}") from exc
        raise
    if allocate:
        _allocate_tensors(interpreter, content, custom_op_registerers)
    return interpreter


def _oneline(exc: BaseException) -> str:
    """An exception's text on one line (TFLite's messages span several)."""
    return " ".join(str(exc).split())


def _message(exc: UnicodeDecodeError) -> str:
    """TFLite's error text whose conversion to str failed: it names a custom op code or tensor whose bytes are not
    UTF-8, and the bytes travel in the exception."""
    return " ".join(bytes(exc.object).decode("utf-8", "replace").split())


def _allocate_tensors(interpreter: Any, content: bytes, custom_op_registerers: Sequence[Any] | None = None) -> None:
    """``interpreter.allocate_tensors()`` with readable errors.

    Raises:
        ValueError: ``content`` is a compressed file the interpreter cannot run as given (the message says how).
        RuntimeError: A kernel's Prepare failed (TFLite's message, with bytes that are not UTF-8 replaced).
    """
    try:
        interpreter.allocate_tensors()
    except UnicodeDecodeError as exc:
        raise RuntimeError(_message(exc)) from None
    except RuntimeError as exc:
        hint = _compressed_hint(content, custom_op_registerers)
        if hint:
            raise ValueError(f"`model_content` could not be prepared ({_oneline(exc)}): {hint}") from exc
        raise


def _compressed_hint(content: bytes, custom_op_registerers: Sequence[Any] | None) -> str:
    """How to run a compressed file that the interpreter refused, or "" for any other file."""
    from tflite_export import codebook

    try:
        layout = codebook.layout_of(content) if codebook.is_compressed(content) else "dense"
    except ValueError as exc:
        return f"it looks like a compressed file but is malformed: {exc}"
    if layout == "loader":
        return ("it is a compressed file (loader layout), whose weights lie past the end of the flatbuffer: run it "
                "with tflite_export.load_interpreter, or pass tflite_export.decompress(model_content)")
    if layout == "kernel" and not custom_op_registerers:
        return ("it is a compressed file (kernel layout) with TfqCodebookDecode nodes: run it with "
                "tflite_export.load_interpreter (decompressed, or use_kernel=True), or pass "
                "custom_op_registerers=[tflite_export.kernels.registerer()]")
    return ""


def _create(content: bytes, num_threads: int, use_xnnpack: bool, custom_op_registerers: Sequence[Any] | None) -> Any:
    if custom_op_registerers:
        from tfq_ext._keras import tf
        from tfq_ext._compat import tf_interpreter_with_custom_ops

        # TensorFlow's interpreter compares against its own enum, not ai_edge_litert's
        resolver = tf.lite.experimental.OpResolverType
        with warnings.catch_warnings():
            # Its deprecation notice points to ai_edge_litert, which cannot host these kernels (see tfq_ext/_compat.py).
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
            return tf_interpreter_with_custom_ops()(
                model_content=content, num_threads=num_threads,
                custom_op_registerers=list(custom_op_registerers),
                experimental_op_resolver_type=(resolver.AUTO if use_xnnpack
                                               else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    return Interpreter(
        model_content=content, num_threads=num_threads,
        experimental_op_resolver_type=(OpResolverType.AUTO if use_xnnpack
                                       else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))


def _delegated_nodes(model_content: bytes) -> tuple[list[dict], set[int], int]:
    """Original nodes, the indices of those XNNPACK took, and the number of partitions.

    A DELEGATE node's partition is the connected region bounded by its input and output tensors, so walking
    backward from its outputs through the producing original nodes, and stopping at its inputs, visits
    exactly the nodes it replaced.
    """
    from tflite_export._graph import readable_names

    interpreter = readable_names(make_interpreter(model_content, num_threads=1, use_xnnpack=True, allocate=False))
    num_original = len(interpreter._get_ops_details())  # before allocation: original nodes only
    try:
        _allocate_tensors(interpreter, model_content)
    except RuntimeError as exc:  # e.g. a custom op no kernel is registered for
        raise ValueError(f"`model_content`: TFLite could not prepare the model to count XNNPACK delegation: "
                         f"{_oneline(exc)}") from exc
    ops = interpreter._get_ops_details()
    original = ops[:num_original]
    delegates = [op for op in ops[num_original:] if op["op_name"] == "DELEGATE"]
    producer = {int(t): i for i, op in enumerate(original) for t in op["outputs"] if t >= 0}
    delegated: set[int] = set()
    for node in delegates:
        boundary = {int(t) for t in node["inputs"] if t >= 0}
        stack = [int(t) for t in node["outputs"] if t >= 0]
        seen: set[int] = set()
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor in seen:
                continue
            seen.add(tensor)
            index = producer.get(tensor)
            if index is None or index in delegated:
                continue
            delegated.add(index)
            stack.extend(int(t) for t in original[index]["inputs"] if t >= 0)
    return original, delegated, len(delegates)


def delegation_report(model_content: bytes) -> dict:
    """Counts the original nodes that the default XNNPACK delegate takes over (one thread).

    Args:
        model_content: The TFLite flatbuffer.

    Returns:
        ``{"nodes": int, "delegated": int, "delegate_partitions": int, "not_delegated": [op names in
        execution order], "by_op": {op name: [delegated, total]}}``.

    Raises:
        ValueError: The interpreter cannot read or prepare the model (e.g. a custom op without a kernel, or a
            compressed file: pass ``tflite_export.decompress(model_content)``).
    """
    original, delegated, partitions = _delegated_nodes(model_content)
    by_op: dict[str, list[int]] = {}
    for i, op in enumerate(original):
        counts = by_op.setdefault(op["op_name"], [0, 0])
        counts[0] += int(i in delegated)
        counts[1] += 1
    return {
        "nodes": len(original),
        "delegated": len(delegated),
        "delegate_partitions": partitions,
        "not_delegated": [op["op_name"] for i, op in enumerate(original) if i not in delegated],
        "by_op": by_op,
    }


def _single_io(interpreter: Any, arg_name: str) -> tuple[dict, dict]:
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"`{arg_name}` must have exactly one input and one output; this model has {len(inputs)} inputs "
            f"and {len(outputs)} outputs. Use the interpreter directly for multi-input models.")
    return inputs[0], outputs[0]


def _to_input_dtype(x: Any, detail: dict) -> np.ndarray:
    """Casts ``x`` to the input tensor's dtype, quantizing float data for an integer input."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise TypeError(f"`x` must hold numbers. Received: x with dtype {x.dtype}")
    target = np.dtype(detail["dtype"])
    if np.issubdtype(target, np.integer) and np.issubdtype(x.dtype, np.floating):
        scale, zero_point = detail["quantization"]
        if scale == 0:
            raise ValueError(f"`x` is float but the model input {detail['name']!r} is {target.name} without "
                             f"quantization parameters; pass integer data. Received: x with dtype {x.dtype}")
        info = np.iinfo(target)
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(target)
    return x.astype(target)


def _invoke_batch(interpreter: Any, xq: np.ndarray, in_detail: dict, out_detail: dict) -> np.ndarray:
    """Runs a batch, resizing the input when the graph allows it, else one sample at a time."""
    index, batch = in_detail["index"], xq.shape[0]
    shape = list(interpreter.get_input_details()[0]["shape"])
    if shape[0] == batch:
        interpreter.set_tensor(index, xq)
        interpreter.invoke()
        return interpreter.get_tensor(out_detail["index"])
    try:
        interpreter.resize_tensor_input(index, [batch] + shape[1:])
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, xq)
        interpreter.invoke()
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        if out.shape[:1] == (batch,):
            return out
    except (RuntimeError, ValueError):
        pass  # e.g. a RESHAPE with a constant batch of 1 cannot be resized: fall back to a loop
    interpreter.resize_tensor_input(index, [1] + shape[1:])
    interpreter.allocate_tensors()
    outs = []
    for i in range(batch):
        interpreter.set_tensor(index, xq[i:i + 1])
        interpreter.invoke()
        outs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    return np.concatenate(outs, axis=0)


def _run(model_content: bytes | None, x: Any, interpreter: Any | None) -> tuple[np.ndarray, dict]:
    if interpreter is None:
        interpreter = make_interpreter(model_content)
    in_detail, out_detail = _single_io(interpreter, "model_content")
    xq = _to_input_dtype(x, in_detail)
    expected = tuple(int(d) for d in in_detail["shape_signature"][1:])
    if xq.ndim != len(expected) + 1 or any(e not in (-1, r) for e, r in zip(expected, xq.shape[1:])):
        raise ValueError(
            f"`x` must have shape (batch, {', '.join(str(e) for e in expected)}) for input "
            f"{in_detail['name']!r} (-1 is any size). For one sample add a batch axis with `x[None]`. "
            f"Received: x with shape {tuple(xq.shape)}")
    return _invoke_batch(interpreter, xq, in_detail, out_detail), out_detail


def run(model_content: bytes | None, x: Any, *, interpreter: Any | None = None) -> np.ndarray:
    """Runs a single-input, single-output model on a batch and returns float32 outputs.

    Float ``x`` for an int8 input is quantized with the input's (scale, zero_point): rounded to nearest and
    clipped to the integer range. An int8 output is dequantized with its (scale, zero_point).

    Args:
        model_content: The TFLite flatbuffer (ignored when ``interpreter`` is given; may then be None).
        x: A batch, shape ``(batch, *input_shape)``.
        interpreter: An interpreter to reuse (e.g. from :func:`make_interpreter`); its input may be resized.

    Returns:
        The output batch as float32.
    """
    out, detail = _run(model_content, x, interpreter)
    scale, zero_point = detail["quantization"]
    if np.issubdtype(out.dtype, np.integer) and scale:
        return ((out.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return out.astype(np.float32)


def run_raw(model_content: bytes | None, x: Any, *, interpreter: Any | None = None) -> np.ndarray:
    """Like :func:`run`, but returns the output tensor as stored (int8 for a full-integer model).

    Parity checks compare these integers against Keras outputs in quantization steps.
    """
    return _run(model_content, x, interpreter)[0]


def output_quantization(model_content: bytes) -> tuple[float, int]:
    """The (scale, zero_point) of a single-output model's output tensor ((0.0, 0) when it is float)."""
    interpreter = make_interpreter(model_content, use_xnnpack=False, allocate=False)
    _, detail = _single_io(interpreter, "model_content")
    scale, zero_point = detail["quantization"]
    return float(scale), int(zero_point)


def _fill_inputs(interpreter: Any, rng: np.random.Generator) -> None:
    """Batch-1 random inputs: latency of these kernels does not depend on the values."""
    resized = False
    for detail in interpreter.get_input_details():
        if detail["shape"][0] != 1 and detail["shape_signature"][0] == -1:
            interpreter.resize_tensor_input(detail["index"], [1] + list(detail["shape"][1:]))
            resized = True
    if resized:
        interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        dtype, shape = np.dtype(detail["dtype"]), detail["shape"]
        if dtype == np.int8:
            value = rng.integers(-128, 128, size=shape).astype(np.int8)
        elif np.issubdtype(dtype, np.floating):
            value = rng.standard_normal(shape).astype(dtype)
        else:  # indices, lengths, masks: zeros are always in range
            value = np.zeros(shape, dtype)
        interpreter.set_tensor(detail["index"], value)


def _timings_ms(times_s: Sequence[float]) -> dict:
    ms = np.asarray(times_s, np.float64) * 1e3
    return {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean()), "samples": int(ms.size)}


def _time_invokes(interpreter: Any, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return times


def measure_latency(model_content: bytes, *, num_threads: int = 1, runs: int = 50, warmup: int = 5,
                    use_xnnpack: bool = True, custom_op_registerers=None) -> dict:
    """Times batch-1 ``invoke()`` calls on random inputs.

    Args:
        model_content: The TFLite flatbuffer.
        num_threads: Interpreter threads.
        runs: Timed invokes.
        warmup: Untimed invokes first (XNNPACK packs weights and caches on the first runs).
        use_xnnpack: Apply the default XNNPACK delegate.
        custom_op_registerers: Registerers of custom kernels (e.g. ``tflite_export.kernels.registerer()``).

    Returns:
        ``{"median_ms", "p10_ms", "p90_ms", "mean_ms", "samples", "num_threads", "use_xnnpack"}``.
    """
    runs = _check_int(runs, "runs", 1)
    warmup = _check_int(warmup, "warmup", 0)
    interpreter = make_interpreter(model_content, num_threads=num_threads, use_xnnpack=use_xnnpack,
                                   custom_op_registerers=custom_op_registerers)
    _fill_inputs(interpreter, np.random.default_rng(0))
    _time_invokes(interpreter, warmup)
    result = _timings_ms(_time_invokes(interpreter, runs))
    result.update(num_threads=num_threads, use_xnnpack=bool(use_xnnpack))
    return result


def compare_latency(models: Mapping[str, bytes], rounds: int = 20, runs_per_round: int = 10, *,
                    warmup: int = 5, num_threads: int = 1, use_xnnpack: bool = True,
                    custom_op_registerers: Mapping[str, list] | None = None) -> dict:
    """Times several models interleaved (A, B, A, B, ...) so that machine noise hits all of them alike.

    Timings on shared machines drift by tens of percent over seconds; measuring the models one after the
    other would attribute that drift to the models. Each round times ``runs_per_round`` invokes of every
    model in turn; ratios are taken per round, then their median is reported.

    Args:
        models: Name -> flatbuffer; the first entry is the baseline of the ratios.
        rounds: Rounds of interleaving.
        runs_per_round: Timed invokes of each model per round.
        warmup: Untimed invokes of each model before the first round.
        num_threads: Interpreter threads.
        use_xnnpack: Apply the default XNNPACK delegate.
        custom_op_registerers: ``{model name: registerers}`` for the models that need a custom kernel (the
            others keep the default interpreter, so that only the compressed file pays for the custom path).

    Returns:
        ``{"baseline": name, "models": {name: {"median_ms", "p10_ms", "p90_ms", "mean_ms", "samples"}},
        "ratio": {name: median over rounds of (round median / baseline round median)}, "rounds",
        "runs_per_round", "num_threads", "use_xnnpack"}``.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"`models` must be a non-empty dict of name -> flatbuffer bytes. "
                         f"Received: models={models!r:.80}")
    rounds = _check_int(rounds, "rounds", 1)
    runs_per_round = _check_int(runs_per_round, "runs_per_round", 1)
    warmup = _check_int(warmup, "warmup", 0)
    names = list(models)
    interpreters = {}
    for name in names:
        check_flatbuffer(models[name], f"models[{name!r}]")
        interpreters[name] = make_interpreter(models[name], num_threads=num_threads, use_xnnpack=use_xnnpack,
                                              custom_op_registerers=(custom_op_registerers or {}).get(name))
        _fill_inputs(interpreters[name], np.random.default_rng(0))
        _time_invokes(interpreters[name], warmup)
    samples: dict[str, list[float]] = {name: [] for name in names}
    round_medians: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            times = _time_invokes(interpreters[name], runs_per_round)
            samples[name].extend(times)
            round_medians[name].append(float(np.median(times)))
    base = np.asarray(round_medians[names[0]])
    return {
        "baseline": names[0],
        "models": {name: _timings_ms(samples[name]) for name in names},
        "ratio": {name: float(np.median(np.asarray(round_medians[name]) / base)) for name in names},
        "rounds": rounds,
        "runs_per_round": runs_per_round,
        "num_threads": num_threads,
        "use_xnnpack": bool(use_xnnpack),
    }
