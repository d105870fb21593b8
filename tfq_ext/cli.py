"""The ``tfq-ext`` command: ``demo``, ``compress MODEL --data DATA.npz --out DIR``, ``export MODEL --data DATA.npz``,
``inspect FILE.tflite``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main"]


def _export(args) -> int:
    import numpy as np

    import tflite_export
    model_path = Path(args.model)
    model = load_model_file(args.model, "export")
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


def load_model_file(path: str, command: str):
    """A saved Keras model (.keras, .h5 or SavedModel folder) with tf_keras, or with Keras 3 if it is a Keras 3 file.

    Raises ``SystemExit`` with a message naming the path when neither can read it.
    """
    from tfq_ext._keras import keras
    import tfq_ext.qat  # noqa: F401  (registers the QAT layers for loading)

    model_path = Path(path)
    if not model_path.exists():
        raise SystemExit(f"tfq-ext {command}: MODEL not found. Received: MODEL={path}")
    try:
        return keras.models.load_model(str(model_path))
    except Exception as first:  # noqa: BLE001 - try Keras 3 before reporting
        try:
            import keras as keras3  # Keras 3, TF 2.21's default Keras, for files it wrote

            if not str(getattr(keras3, "__version__", "0")).startswith("3"):
                raise first
            return keras3.models.load_model(str(model_path))
        except Exception as second:  # noqa: BLE001
            raise SystemExit(f"tfq-ext {command}: cannot read MODEL as a Keras model (.keras, .h5 or SavedModel "
                             f"folder). Received: MODEL={path}. tf_keras: {type(first).__name__}: "
                             f"{str(first)[:300]}; Keras 3: {type(second).__name__}: {str(second)[:300]}") from None


_NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val")


def _compress(args) -> int:
    import numpy as np

    from tfq_ext.compress import METHODS, check_classification_data, compress_model

    data_path = Path(args.data)
    if not data_path.exists():
        raise SystemExit(f"tfq-ext compress: --data file not found. Received: --data={args.data}")
    try:
        with np.load(data_path, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_KEYS if k not in npz.files]
            if missing:
                raise SystemExit(f"tfq-ext compress: --data must hold the arrays {list(_NPZ_KEYS)}; missing "
                                 f"{missing}. Received: {args.data} with {sorted(npz.files)}")
            arrays = {k: npz[k] for k in _NPZ_KEYS}
    except (OSError, ValueError) as exc:
        raise SystemExit(f"tfq-ext compress: --data is not a readable .npz file. Received: --data={args.data} "
                         f"({exc})") from None
    unknown = [m for m in args.methods or () if m not in METHODS]
    if unknown:
        raise SystemExit(f"tfq-ext compress: --methods must be names from {list(METHODS)}. Received: {unknown}")
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        raise SystemExit(f"tfq-ext compress: --budget-minutes must be > 0. Received: {args.budget_minutes}")
    model = load_model_file(args.model, "compress")
    from tfq_ext._keras import ensure_tf_keras_model

    try:
        model = ensure_tf_keras_model(model, "MODEL")
        train, validation = check_classification_data(model, (arrays["x_train"], arrays["y_train"]),
                                                      (arrays["x_val"], arrays["y_val"]))
    except (TypeError, ValueError) as exc:  # everything is checked before any training starts
        raise SystemExit(f"tfq-ext compress: {exc}") from None
    try:
        result = compress_model(model, train, validation, methods=args.methods, max_accuracy_drop=args.max_drop,
                                target_bytes=args.target_bytes,
                                time_budget=None if args.budget_minutes is None else 60.0 * args.budget_minutes,
                                out_dir=args.out, epochs=args.epochs, batch_size=args.batch_size,
                                distill=args.distill, verbose=2 if args.verbose else 1)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"tfq-ext compress: {exc}") from None
    print(result.to_markdown(), flush=True)
    print(f"[tfq-ext compress] wrote report.json, report.md, frontier.png and the .tflite files to "
          f"{Path(args.out).resolve()}", flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tfq-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a CNN on scikit-learn's digits and run `compress` on it")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--float-epochs", type=int, default=30)
    demo.add_argument("--epochs", type=float, default=4, help="fine-tuning epochs per candidate (default 4)")
    demo.add_argument("--methods", nargs="+", default=None, metavar="METHOD", help="as for `compress`")
    compress = sub.add_parser("compress", help="run every method on a trained model and report the size/accuracy "
                                                "frontier, the files and the recommended one")
    compress.add_argument("model", help="a trained Keras model: .keras/.h5 file or SavedModel folder")
    compress.add_argument("--data", required=True, help=".npz with x_train, y_train, x_val, y_val (integer labels)")
    compress.add_argument("--out", required=True, help="output folder for the files and reports")
    compress.add_argument("--max-drop", type=float, default=None, metavar="POINTS",
                          help="recommend the smallest file within POINTS percentage points of float (default 1)")
    compress.add_argument("--target-bytes", type=int, default=None, metavar="N",
                          help="recommend the most accurate file of at most N bytes")
    compress.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                          help="ptq_int8 qat_int8 kq diffq ipq kq+ipq tfmot_qat (default: all but tfmot_qat)")
    compress.add_argument("--budget-minutes", type=float, default=None, metavar="M",
                          help="start no new candidate after M minutes")
    compress.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs per candidate (default 2)")
    compress.add_argument("--batch-size", type=int, default=64)
    compress.add_argument("--distill", action="store_true",
                          help="fine-tune the candidates with knowledge distillation from the float model")
    compress.add_argument("--verbose", action="store_true", help="Keras progress bars and k-means logs")
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

        run_demo(args.out, float_epochs=args.float_epochs, epochs=args.epochs, methods=args.methods)
        return 0
    if args.command == "export":
        return _export(args)
    if args.command == "compress":
        return _compress(args)
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
