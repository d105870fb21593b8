"""Worker for test_integer_aggregation's hostile-file test: loads every ``case*.tflite`` of a folder with
GraphInterpreter, runs it on the saved graph and on hostile edge indices, and prints one line per case and a
summary ``cases N refused R ran K``. Any exception is a refusal; a crash or hang kills the process, which the
test sees."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from tfq_ext.degree_quant import GraphInterpreter  # noqa: E402


def main(folder: Path) -> int:
    graph = np.load(folder / "graph.npz")
    features, source, target = graph["features"], graph["source"], graph["target"]
    n = len(features)
    rng = np.random.default_rng(1)
    hostile = [(source, target), (source, target + n), (source - n - 1, target), (np.full_like(source, 2 ** 31 - 1), target),
               (rng.integers(-2 ** 31, 2 ** 31 - 1, size=source.size), target), (source[:0], target[:0])]
    refused = ran = 0
    cases = sorted(folder.glob("case*.tflite"))
    for path in cases:
        content = path.read_bytes()
        outcome = "ran"
        try:
            runner = GraphInterpreter(content)
            for src, tgt in hostile:
                try:
                    runner(features, src.astype(np.int32), tgt.astype(np.int32))
                except Exception as exc:  # noqa: BLE001 - any exception is a clean refusal
                    if src is source:
                        raise
        except Exception as exc:  # noqa: BLE001
            outcome = f"refused: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        if outcome == "ran":
            ran += 1
        else:
            refused += 1
        print(path.name, outcome, flush=True)
    print(f"cases {len(cases)} refused {refused} ran {ran}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
