"""AdaComp under a single-process MirroredStrategy over 4 logical CPU devices (run in a subprocess: the logical
devices must be configured before TensorFlow initialises them, and conftest already imported TensorFlow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).with_name("_mirrored_job.py")


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(JOB), str(tmp_path_factory.mktemp("mirrored"))], env=env,
                          capture_output=True, text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_exchange_sums_every_replicas_compressed_update(mirrored):
    assert mirrored["replicas"] == 4
    # float32 sums of four values of magnitude ~1: a few ulps.
    assert mirrored["exchange_max_error"] < 1e-5
    assert mirrored["exchange_report"]["steps"] == 1
    # quantize=False sends the selected values themselves.
    assert mirrored["exact_exchange_max_error"] < 1e-5


def test_fit_trains_and_replicas_stay_identical(mirrored):
    assert mirrored["is_sgd"]
    assert mirrored["identical_weights"]
    loss = mirrored["history"]["loss"]
    assert loss[-1] < 0.5 * loss[0]
    assert mirrored["test_accuracy"] > 0.8


def test_bytes_exchanged_are_counted_and_reduced(mirrored):
    report, history = mirrored["report"], mirrored["history"]
    assert report["steps"] == 3 * (1500 // 64 + 1)
    # 2880 + 72 + 8 + 10 float32 per replica and step, dense.
    assert report["dense_bytes_per_step"] == 4 * (2880 + 72 + 8 + 10)
    assert report["wire_reduction"] > 10
    assert report["fc_compression"] > report["conv_compression"] > 1
    assert len(history["adacomp_wire_bytes_per_step"]) == 3
    assert "adacomp_fc_compression" in history


def test_residuals_are_per_replica_and_checkpointed(mirrored):
    assert mirrored["residuals_differ"]
    assert mirrored["residuals_restored"]


def test_rms_precondition_trains_with_identical_replicas_and_per_learner_moments(mirrored):
    assert mirrored["rms_identical_weights"]
    assert mirrored["rms_moments_differ"]
    assert mirrored["rms_loss"][-1] < 0.5 * mirrored["rms_loss"][0]
    assert mirrored["rms_test_accuracy"] > 0.8
