"""A real 2-process MultiWorkerMirroredStrategy job on loopback (examples/adacomp_multiworker.py's launcher):
worker 1 is killed mid-training, both restart from their own checkpoints with their residuals."""

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "adacomp_multiworker.py"
STEPS_PER_EPOCH = 1500 // 64  # drop_remainder


def test_two_workers_crash_restart_identical_weights(tmp_path):
    launch = runpy.run_path(str(EXAMPLE), run_name="adacomp_multiworker")["launch"]
    crash_at = STEPS_PER_EPOCH + 7  # in the middle of the second epoch, after the first checkpoint
    out = launch(tmp_path, epochs=2, crash_at_step=crash_at, timeout=240)
    first, second = out["runs"]
    assert first[1] == 3  # the simulated crash; worker 0 was stopped by the launcher
    assert second == [0, 0]
    assert out["identical_weights"]
    for result in out["results"]:
        assert result["steps"] == 2 * STEPS_PER_EPOCH
        restored = result["restored"]
        assert restored["epoch"] == 1
        # Every layer's residual is back exactly as it was saved, and is not trivially zero.
        assert restored["residual_sums"] == restored["saved_residual_sums"]
        assert all(v > 0 for v in restored["residual_sums"].values())
    # Residuals are per learner: the two workers saved different ones.
    sums = [r["restored"]["residual_sums"] for r in out["results"]]
    assert sums[0] != sums[1]
    report = out["results"][0]["report"]
    assert report["steps"] == STEPS_PER_EPOCH  # counters cover the restarted run
    assert report["wire_reduction"] >= 20, report
