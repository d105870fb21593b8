"""Runs all benchmarks: ``python -m benchmarks.run [--quick] [--out DIR]``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCHMARKS = ["qat_vs_tfmot", "qat_cost", "applications", "keras3_coverage", "quant_noise_pq", "quant_noise_lm", "compressed_tflite", "strip", "frontier", "distill", "kq", "diffq", "adacomp", "adacomp_lm",
              "degree_quant", "degree_quant_speed"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes (minutes)")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                        help="output directory (default: benchmarks/results)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.only or BENCHMARKS:
        start = time.perf_counter()
        print(f"=== benchmark {name} (quick={args.quick}) ===", flush=True)
        module = __import__(f"benchmarks.{name}", fromlist=["main"])
        module.main(out_dir, quick=args.quick, command=" ".join([sys.executable, "-m", "benchmarks.run", *(argv or sys.argv[1:])]))
        print(f"=== {name} done in {time.perf_counter() - start:.1f} s ===", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
