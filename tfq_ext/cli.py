"""The ``tfq-ext`` command: ``demo``, ``export MODEL --data DATA.npz``, ``inspect FILE.tflite``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main"]


def _export(args) -> int:
    import numpy as np

    import tflite_export
    from tfq_ext._keras import keras
    import tfq_ext.qat  # noqa: F401  (registers the QAT layers for loading)

    model_path = Path(args.model)
    if not model_path.exists():
        raise SystemExit(f"tfq-ext export: MODEL not found. Received: MODEL={args.model}")
    model = keras.models.load_model(str(model_path))
    data = None
    if args.data:
        if not Path(args.data).exists():
            raise SystemExit(f"tfq-ext export: --data file not found. Received: --data={args.data}")
        with np.load(args.data) as npz:
            key = "x" if "x" in npz.files else npz.files[0]
            data = npz[key]
    print(f"[tfq-ext export] converting {model_path} ...", flush=True)
    flatbuffer = tflite_export.convert(model, representative_data=data, float_io=args.float_io)
    out = Path(args.output or model_path.with_suffix(".tflite").name)
    out.write_bytes(flatbuffer)
    print(tflite_export.verify(flatbuffer, float_io=args.float_io))
    print(f"[tfq-ext export] wrote {out} ({len(flatbuffer)} bytes)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tfq-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, QAT and export a CNN on scikit-learn's digits")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--float-epochs", type=int, default=30)
    demo.add_argument("--qat-epochs", type=int, default=8)
    export = sub.add_parser("export", help="convert a saved Keras model (QAT or float) to a full-int8 .tflite")
    export.add_argument("model", help="a .keras/.h5 file or SavedModel folder")
    export.add_argument("--data", help=".npz with representative inputs (key 'x'); needed for float models")
    export.add_argument("--output", "-o", help="output .tflite path")
    export.add_argument("--float-io", action="store_true", help="keep float32 input/output tensors")
    inspect = sub.add_parser("inspect", help="print ops, dtypes, sizes and XNNPACK delegation of a .tflite (of a "
                                              "compressed file: its compressed weights, then its decompressed model)")
    inspect.add_argument("file")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from tfq_ext.demo import run_demo

        run_demo(args.out, float_epochs=args.float_epochs, qat_epochs=args.qat_epochs)
        return 0
    if args.command == "export":
        return _export(args)
    return _inspect(args)


def _inspect(args) -> int:
    import tflite_export

    try:
        tflite_export.inspect(args.file)
    except (FileNotFoundError, ValueError) as exc:  # a missing, foreign or malformed file: no traceback
        raise SystemExit(f"tfq-ext inspect: {exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
