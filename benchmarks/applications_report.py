"""Markdown tables of ``benchmarks/results/applications.json`` (written by ``benchmarks.applications``)."""

from __future__ import annotations

from pathlib import Path


def _cell(row: dict | None) -> str:
    """One tool's result for one constructor: partitions and nodes outside, or why it stops."""
    if row is None:
        return "n/a"
    if row.get("accepted") is None:
        return "n/a (not in this Keras)"
    if not row.get("accepted"):
        return "refused: " + row.get("error", "")[:90].replace("|", "/")
    if "partitions" not in row:
        return "accepted; conversion failed: " + row.get("error", "")[:80].replace("|", "/")
    outside = row.get("outside") or []
    names = sorted(set(outside))
    text = (f"{'int8' if row['integer_only'] else 'NOT integer-only'}, {row['partitions']} partition(s), "
            f"{len(outside)} outside{' (' + ', '.join(names) + ')' if names else ''}")
    return text


def _qat_cost(row: dict | None) -> str:
    if not row or "step_ms" not in row:
        return "-"
    return f"{row['step_ms']:.0f} ms / {row['peak_rss_mb']:.0f} MB"


def coverage_table(coverage: dict) -> list[str]:
    rows = coverage["rows"]
    index = {(r["name"], r["build"], r["tool"]): r for r in rows}
    names = list(dict.fromkeys(r["name"] for r in rows))
    lines = [f"Input {coverage['size']}x{coverage['size']}, weights=None, 10 classes (softmax head); "
             f"\"outside\" = nodes XNNPACK leaves to TFLite's builtin kernels.", "",
             "| constructor | tfq_ext QAT (tf_keras) | tfq_ext QAT (Keras 3) | tfmot QAT | PTQ int8, tfq_ext `convert` | "
             "PTQ int8, converter alone | QAT step / peak RSS: tfq_ext | tfmot | tfq_ext layers within 1 step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        ours = index.get((name, "tf_keras", "tfq_ext"))
        parity = "-"
        if ours and ours.get("parity_within_1") is not None:
            parity = f"{100 * ours['parity_within_1']:.0f}% of {ours['parity_layers']}"
        lines.append(f"| {name} | {_cell(ours)} | {_cell(index.get((name, 'keras3', 'tfq_ext')))} | "
                     f"{_cell(index.get((name, 'tf_keras', 'tfmot')))} | "
                     f"{_cell(index.get((name, 'tf_keras', 'ptq')))} | "
                     f"{_cell(index.get((name, 'tf_keras', 'ptq_plain')))} | {_qat_cost(ours)} | "
                     f"{_qat_cost(index.get((name, 'tf_keras', 'tfmot')))} | {parity} |")
    one = [n for n in names if (index.get((n, "tf_keras", "tfq_ext")) or {}).get("partitions") == 1
           and index[(n, "tf_keras", "tfq_ext")].get("integer_only")]
    k3 = [n for n in names if (index.get((n, "keras3", "tfq_ext")) or {}).get("partitions") == 1
          and index[(n, "keras3", "tfq_ext")].get("integer_only")]
    k3_total = [n for n in names if (index.get((n, "keras3", "tfq_ext")) or {}).get("accepted") is not None]
    tfmot_ok = [n for n in names if (index.get((n, "tf_keras", "tfmot")) or {}).get("accepted")]
    lines += ["", f"tfq_ext: {len(one)}/{len(names)} tf_keras builds and {len(k3)}/{len(k3_total)} Keras 3 builds "
              f"(Keras 3 has no RegNet) reach an integer-only file in one XNNPACK partition; tfmot accepts "
              f"{len(tfmot_ok)}/{len(names)}."]
    return lines


def accuracy_table(accuracy: dict) -> list[str]:
    lines = [f"{accuracy['data']}; every accuracy but the first is the TFLite file's on the 10k test images.", "",
             "| model | float Keras | float, same extra epochs as QAT | fp32 file | PTQ int8 file | QAT int8 file | "
             "QAT file - same-budget float (points) | int8 files | fp32 / QAT int8 / PTQ int8 ms (XNNPACK, 1 thread) | "
             "float / QAT epoch s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in accuracy["architectures"].items():
        lat = r["latency"]["models"]
        files = "; ".join(f"{k}: {r[k + '_file']['partitions']} partition(s), outside {r[k + '_file']['outside']}"
                          for k in ("qat_int8", "ptq_int8"))
        lines.append(
            f"| {name} ({r.get('train_images', 60000) // 1000}k images, {r['float_epochs']}+{r['qat_epochs']} epochs) | {r['float_keras_acc']:.4f} | "
            f"{r['float_reference_keras_acc']:.4f} | {r['fp32_tflite_acc']:.4f} | {r['ptq_int8_tflite_acc']:.4f} | {r['qat_int8_tflite_acc']:.4f} | "
            f"{r['qat_minus_float_points']:+.2f} | {files} | {lat['fp32']['median_ms']:.3f} / "
            f"{lat['qat_int8']['median_ms']:.3f} / {lat['ptq_int8']['median_ms']:.3f} | "
            f"{sorted(r['float_epoch_s'])[len(r['float_epoch_s']) // 2]:.0f} / "
            f"{sorted(r['qat_epoch_s'])[len(r['qat_epoch_s']) // 2]:.0f} |")
    return lines


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# keras.applications through tfq_ext, tfmot and post-training int8", "",
             f"Command: `{results.get('command', '')}` ({results.get('date', '')}); machine: "
             f"{results['machine']['platform']}, {results['machine']['cpus']} CPUs; versions "
             f"{results['machine']['versions']}.", ""]
    if "coverage" in results:
        lines += ["## Coverage", ""] + coverage_table(results["coverage"]) + [""]
    if "accuracy" in results:
        lines += ["## Real data", ""] + accuracy_table(results["accuracy"]) + [""]
    Path(path).write_text("\n".join(lines))
