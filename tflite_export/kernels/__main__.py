"""``python -m tflite_export.kernels [--force]``: builds the TfqCodebookDecode kernel libraries."""

from tflite_export.kernels import main

raise SystemExit(main())
