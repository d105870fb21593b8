"""Fuzzing every reader of compressed files (Python decompress / describe / inspect / verify / Edge TPU check /
strip, the C loader, the C kernel) with seeded mutations of loader-layout, kernel-layout and dense files.

The readers run in a worker process (``fuzz_worker.py``); a case that kills it with a signal or runs past its
time is recorded against that case and the worker restarts after it. The test asserts: no crash, no hang, no
exception other than ValueError from a reader, no reader modifies its input, the C loader and Python
``decompress`` agree (same bytes, or both refuse; a file only Python refuses must then be refused by the
interpreter too), the C kernel computes what the decompressed model computes whenever both run, and a
stripped dense file computes what the file does whenever that runs.
"""

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flatbuffers import flexbuffers

from tests.tflite_export import test_codebook
from tflite_export import _loader_layout
from tflite_export import flatbuffer as fb
from tflite_export.codebook import CUSTOM_OP_NAME, compress

codebook_int8 = test_codebook.codebook_int8
ROOT = Path(__file__).resolve().parents[2]
CASE_SECONDS = 30
READERS = ("decompress", "native", "describe", "verify", "edgetpu", "inspect", "strip")


def _varwidth_file(dense: bytes) -> bytes:
    """A loader-layout file whose largest weight is stored in variable-width codes."""
    model = fb.read_model(dense)
    subgraph = model.subgraphs[0]
    tensor = max((t for t in subgraph.tensors if fb.buffer_data(model, t.buffer) is not None
                  and fb.tensor_type_name(t.type) == "INT8"), key=lambda t: int(np.prod(t.shape)))
    data = fb.buffer_data(model, tensor.buffer).view(np.int8)
    view = (data.size // 8, 8, 1)
    f, b0, payload, table, _ = _loader_layout.encode_varwidth(data.reshape(-1, 8))
    return _loader_layout.write(model, [_loader_layout.Plan(int(tensor.buffer), 2, view, f, b0, payload, table)])


def _regions(content: bytes) -> dict:
    """Byte ranges of the descriptor, payloads, tables and custom options inside the file."""
    model = fb.read_model(content)
    regions = {}
    for index, buffer in enumerate(model.buffers):
        data = fb.buffer_data(model, index)
        if data is not None and 0 < data.size <= 4096:
            at = content.find(data.tobytes())
            if at >= 0:
                regions.setdefault("buffers", []).append((at, at + data.size))
    for op in model.subgraphs[0].operators:
        if op.customOptions is not None:
            raw = bytes(np.asarray(op.customOptions, np.uint8))
            at = content.find(raw)
            if at >= 0:
                regions.setdefault("options", []).append((at, at + len(raw)))
    regions["tables"] = [(0, min(len(content), 2048))]
    regions["anywhere"] = [(0, len(content))]
    return regions


def _flip(rng, content, ranges):
    data = bytearray(content)
    start, end = ranges[rng.integers(len(ranges))]
    for _ in range(rng.integers(1, 4)):
        at = int(rng.integers(start, end))
        data[at] ^= int(rng.integers(1, 256))
    return bytes(data)


def _descriptor_field(rng, content):
    model = fb.read_model(content)
    (entry,) = [m for m in model.metadata if m.name in (b"tfq_codebook", "tfq_codebook")]
    raw = bytearray(fb.buffer_data(model, entry.buffer).tobytes())
    count = struct.unpack_from("<I", raw, 12)[0]
    field = int(rng.integers(11))
    at = _loader_layout.HEADER.size + _loader_layout.ENTRY.size * int(rng.integers(count))
    offsets = [0, 4, 8, 12, 16, 24, 32, 40, 44, 48, 56]
    width = 8 if field in (4, 5, 6, 9, 10) else 4
    values = [0, 1, 2, 2**31 - 1, 2**31, 2**32 - 1, int(rng.integers(0, 1 << 16))]
    if width == 8:
        values += [2**40, 2**63, 2**64 - 1]
    value = values[int(rng.integers(len(values)))]
    raw[at + offsets[field]:at + offsets[field] + width] = value.to_bytes(width, "little")
    fb.set_buffer_data(model, entry.buffer, bytes(raw))
    return fb.write_model(model)


def _decode_nodes(model):
    subgraph = model.subgraphs[0]
    return subgraph, [i for i, op in enumerate(subgraph.operators) if fb.op_name(model, op) == CUSTOM_OP_NAME]


def _structural(rng, content):
    """Reordered / duplicated decode nodes, out-of-range references, huge declared sizes (kernel layout)."""
    model = fb.read_model(content)
    subgraph, nodes = _decode_nodes(model)
    position = nodes[int(rng.integers(len(nodes)))]
    op = subgraph.operators[position]
    kind = int(rng.integers(7))
    if kind == 0:  # after its reader
        reader = next(i for i, o in enumerate(subgraph.operators) if op.outputs[0] in list(o.inputs))
        subgraph.operators.insert(reader + 1, subgraph.operators.pop(position))
    elif kind == 1:  # duplicated
        subgraph.operators.insert(position, subgraph.operators[position])
    elif kind == 2:
        subgraph.tensors[op.inputs[int(rng.integers(2))]].buffer = int(rng.choice([len(model.buffers), 2**31 - 1]))
    elif kind == 3:
        op.opcodeIndex = len(model.operatorCodes) + int(rng.integers(3))
    elif kind == 4:
        op.inputs = np.asarray([op.inputs[0], len(subgraph.tensors) + 5], np.int32)
    elif kind == 5:  # huge declared size
        attrs = flexbuffers.Loads(bytes(op.customOptions))
        attrs["A"] = int(rng.choice([1 << 20, 1 << 28]))
        op.customOptions = np.frombuffer(flexbuffers.Dumps(attrs), np.uint8).copy()
    else:  # the output points at a constant buffer
        constant = next(t.buffer for t in subgraph.tensors if fb.buffer_data(model, t.buffer) is not None)
        subgraph.tensors[op.outputs[0]].buffer = constant
    return fb.write_model(model)


def _cases(seeds: dict, rng) -> list[tuple[str, bytes]]:
    cases = []
    for name, content in seeds.items():
        cases.append((f"{name}/original", content))
        for cut in sorted(set([8, 16, 64, len(content) // 2, len(content) - 1] +
                              rng.integers(8, len(content), size=12).tolist())):
            cases.append((f"{name}/truncate@{cut}", content[:cut]))
        regions = _regions(content)
        for region, ranges in regions.items():
            for _ in range(10 if region != "anywhere" else 16):
                cases.append((f"{name}/flip-{region}", _flip(rng, content, ranges)))
        if name.startswith("loader"):
            for _ in range(24):
                cases.append((f"{name}/descriptor-field", _descriptor_field(rng, content)))
        if name == "kernel":
            for _ in range(28):
                cases.append((f"{name}/structural", _structural(rng, content)))
    return cases


def _run_worker(cases_dir: Path, count: int, results_path: Path) -> dict:
    """Runs the worker over all cases; returns case -> result, with crashes and hangs recorded."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results, start = {}, 0
    while start < count:
        process = subprocess.Popen([sys.executable, "-m", "tests.tflite_export.fuzz_worker", str(cases_dir),
                                    str(start), str(results_path)], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        current, since = None, time.monotonic()
        seen = 0
        while process.poll() is None:
            time.sleep(0.2)
            lines = results_path.read_text().splitlines() if results_path.exists() else []
            for line in lines[seen:]:
                record = json.loads(line)
                if "start" in record:
                    current, since = record["start"], time.monotonic()
                else:
                    results[record["case"]] = record
                    current = None
            seen = len(lines)
            limit = 120 if current is None and not results else CASE_SECONDS
            if time.monotonic() - since > limit:
                process.kill()
                process.wait()
                break
        lines = results_path.read_text().splitlines() if results_path.exists() else []
        for line in lines[seen:]:
            record = json.loads(line)
            if "start" in record:
                current = record["start"]
            else:
                results[record["case"]] = record
                current = None
        stderr = process.stderr.read().decode(errors="replace")[-2000:]
        if process.returncode == 0 and current is None:
            break
        failed = current if current is not None else start
        status = "hang" if process.returncode == -9 else f"crash (exit {process.returncode})"
        results[failed] = {"case": failed, "worker": status, "stderr": stderr}
        start = failed + 1
    return results


def test_fuzz_every_reader(codebook_int8, ptq_int8, tmp_path):
    rng = np.random.default_rng(20261201)
    seeds = {"loader": compress(codebook_int8), "loader-varwidth": _varwidth_file(codebook_int8),
             "kernel": compress(codebook_int8, layout="kernel"), "dense": ptq_int8}
    cases = _cases(seeds, rng)
    cases_dir = tmp_path / "cases"
    cases_dir.mkdir()
    for i, (_, content) in enumerate(cases):
        (cases_dir / f"{i}.tflite").write_bytes(content)
    results = _run_worker(cases_dir, len(cases), tmp_path / "results.jsonl")
    problems = []
    for i, (name, content) in enumerate(cases):
        r = results.get(i)
        if r is None:
            problems.append(f"{i} {name}: no result")
            continue
        if "worker" in r:
            problems.append(f"{i} {name}: {r['worker']}: {r['stderr'][-300:]}")
            continue
        for reader in READERS + ("layout",):
            if str(r.get(reader, "")).startswith("EXC:"):
                problems.append(f"{i} {name}: {reader} raised {r[reader]}")
        if "mutated_input" in r:
            problems.append(f"{i} {name}: {r['mutated_input']} modified its input")
        if r["layout"] != "kernel":
            python, native = r["decompress"], r["native"]
            if python.startswith("ok:") and native.startswith("ok:") and python != native:
                problems.append(f"{i} {name}: C loader and decompress give different bytes")
            elif python.startswith("ok:") != native.startswith("ok:"):
                # one reader refused: the other's output must not run either (nothing runs silently)
                ran = str(r.get("run_native" if native.startswith("ok:") else "run_decompressed", ""))
                if ran.startswith("ok:"):
                    refused = "decompress" if native.startswith("ok:") else "native"
                    problems.append(f"{i} {name}: only {refused} refused a file that runs: "
                                    f"{r.get(refused + '_message')}")
        original, stripped = str(r.get("run_original", "")), str(r.get("run_stripped", ""))
        if original.startswith("ok:") and stripped != original:
            problems.append(f"{i} {name}: the stripped file computes something else ({stripped[:80]})")
        if r["layout"] == "kernel":
            kernel, decoded = str(r.get("run_kernel", "")), str(r.get("run_decompressed", ""))
            if kernel.startswith("ok:") and decoded.startswith("ok:") and kernel != decoded:
                problems.append(f"{i} {name}: the C kernel computes something else than the decompressed model")
            # decompress also refuses general corruption the TFLite runtime tolerates (a signature naming no
            # tensor, ...); only a refused decode node means the kernel ran something it should not have
            if kernel.startswith("ok:") and r["decompress"] == "ValueError" and \
                    CUSTOM_OP_NAME in r.get("decompress_message", ""):
                problems.append(f"{i} {name}: the C kernel ran a file decompress refuses: "
                                f"{r.get('decompress_message')}")
    summary = {"cases": len(cases), "results": len(results)}
    for reader in READERS + ("run_kernel", "run_native"):
        summary[reader] = {"ok": sum(1 for r in results.values() if str(r.get(reader, "")).startswith("ok:")),
                           "refused": sum(1 for r in results.values() if r.get(reader) == "ValueError")}
    summary["refused_by_decompress"] = summary["decompress"]["refused"]
    print(summary)
    assert not problems, f"{summary}\n" + "\n".join(problems[:40])
    assert summary["refused_by_decompress"] > len(cases) // 4  # the mutations do reach the checks
