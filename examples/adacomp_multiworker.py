"""AdaComp on a real 2-worker MultiWorkerMirroredStrategy over loopback, with a crash and a restart.

    python examples/adacomp_multiworker.py [--epochs 2] [--crash-at-step 30]

Starts two worker processes (TF_CONFIG with two free localhost ports) that train the same small CNN on
scikit-learn's digits with ``model.fit`` and ``with_adacomp(SGD)``: each worker sends only its sparse
(index, sign) entries and one scale per layer through the strategy's all-gather. Every epoch each worker
checkpoints its model, optimizer and its own AdaComp residuals. With ``--crash-at-step N`` worker 1 kills
itself after step N; the launcher stops the other worker and restarts both, which resume from their own
checkpoints with their residuals (``tests/distribute/test_multiworker.py`` runs that scenario).
At the end the two workers' weights are compared (they must be identical), the bytes exchanged per step are
compared with a dense all-reduce, and the trained model is exported to a full-int8 TFLite file.

References:
    Chen et al., "AdaComp", AAAI 2018, arXiv 1712.02679.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_WORKERS = 2
GLOBAL_BATCH = 64


def build_model(keras):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="conv"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(10, name="fc"),
    ], name="digits_cnn")


def _residual_sums(compressor) -> dict:
    return {k: float(abs(v).sum()) for k, v in compressor.residual_values().items()}


def worker(index: int, out_dir: Path, epochs: int, crash_at_step: int) -> None:
    """One worker process: TF_CONFIG is already in the environment."""
    import numpy as np

    from tfq_ext._keras import keras, tf
    from tfq_ext.data import load_digits
    from tfq_ext.distribute import AdaCompLogger, with_adacomp

    # A collective timeout turns a dead peer into an error instead of a hang.
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(timeout_seconds=120))
    keras.utils.set_random_seed(0)
    data = load_digits()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = (tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
               .shuffle(len(data.x_train), seed=0).batch(GLOBAL_BATCH, drop_remainder=True).with_options(options))
    with strategy.scope():
        model = build_model(keras)
        model.compile(with_adacomp(keras.optimizers.SGD(0.05, momentum=0.9)),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    compressor = model.optimizer.adacomp
    # Each worker keeps its own checkpoint: the residuals are per learner (the chief's would be wrong here).
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    ckpt_dir = out_dir / f"ckpt_worker{index}"
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=2)
    initial_epoch, restored = 0, None
    if manager.latest_checkpoint:
        checkpoint.read(manager.latest_checkpoint).expect_partial()
        initial_epoch = int(manager.latest_checkpoint.rsplit("-", 1)[1])
        with strategy.scope():
            compressor.build(model.trainable_variables)  # residuals are restored as soon as they exist
        restored = {"epoch": initial_epoch, "residual_sums": _residual_sums(compressor),
                    "saved_residual_sums": json.loads((ckpt_dir / f"residuals-{initial_epoch}.json").read_text())}

    class Checkpointing(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            manager.save(checkpoint_number=epoch + 1)
            (ckpt_dir / f"residuals-{epoch + 1}.json").write_text(json.dumps(_residual_sums(compressor)))

        def on_train_batch_end(self, batch, logs=None):
            if crash_at_step and int(model.optimizer.iterations.numpy()) == crash_at_step and index == N_WORKERS - 1:
                print(f"worker {index}: simulated crash at step {crash_at_step}", flush=True)
                os._exit(3)

    logger = AdaCompLogger()
    history = model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
                        callbacks=[logger, Checkpointing()])
    np.savez(out_dir / f"weights_worker{index}.npz", *[w.numpy() for w in model.weights])
    report = compressor.report()
    result = {"index": index, "restored": restored, "report": report, "epochs": logger.epochs,
              "loss": history.history.get("loss", []), "steps": int(model.optimizer.iterations.numpy())}
    (out_dir / f"result_worker{index}.json").write_text(json.dumps(result, default=float))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(out_dir: Path, epochs: int, crash_at_step: int) -> list[subprocess.Popen]:
    ports = _free_ports(N_WORKERS)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    root = str(Path(__file__).resolve().parent.parent)
    procs = []
    for i in range(N_WORKERS):
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                   ADACOMP_WORKER=f"{i},{out_dir},{epochs},{crash_at_step}")
        with open(out_dir / f"worker{i}.log", "ab") as log:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve())], env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
    return procs


def _wait(procs, deadline: float) -> list[int]:
    """Waits for all workers; once one fails, the others are stopped (a collective cannot finish without it)."""
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes
        if any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            return [p.poll() for p in procs]
        time.sleep(0.2)


def launch(out_dir, epochs: int = 3, crash_at_step: int = 0, timeout: float = 300.0) -> dict:
    """Runs the 2-worker job (restarting it once after a crash) and returns the workers' results.

    Args:
        out_dir: folder for logs, checkpoints and results (must be empty or absent).
        epochs: epochs to train.
        crash_at_step: if > 0, the last worker kills itself after this optimizer step of the first run.
        timeout: seconds for each run.
    """
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    crash = crash_at_step
    for _ in range(2):
        codes = _wait(_start(out_dir, epochs, crash), time.monotonic() + timeout)
        runs.append(codes)
        if all(c == 0 for c in codes):
            break
        crash = 0  # the restarted job runs to the end
    if not all(c == 0 for c in runs[-1]):
        logs = "\n".join((out_dir / f"worker{i}.log").read_text(errors="replace")[-3000:] for i in range(N_WORKERS))
        raise RuntimeError(f"workers failed with exit codes {runs}:\n{logs}")
    results = [json.loads((out_dir / f"result_worker{i}.json").read_text()) for i in range(N_WORKERS)]
    weights = [np.load(out_dir / f"weights_worker{i}.npz") for i in range(N_WORKERS)]
    identical = all(np.array_equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0].files)
    return {"runs": runs, "results": results, "identical_weights": identical,
            "weights": [weights[0][k] for k in weights[0].files]}


def main(epochs: int = 2, crash_at_step: int = 0) -> dict:
    import numpy as np

    import tflite_export
    from tfq_ext._keras import keras
    from tfq_ext.data import load_digits

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = launch(tmp, epochs=epochs, crash_at_step=crash_at_step)
        seconds = time.perf_counter() - start
    report = out["results"][0]["report"]
    restored = out["results"][1]["restored"]
    print(f"2 workers, {out['results'][0]['steps']} steps in {seconds:.0f} s; exit codes per run {out['runs']}")
    if restored:
        print(f"worker 1 restarted from epoch {restored['epoch']}; residual |G| sums restored "
              f"{restored['residual_sums']} (saved {restored['saved_residual_sums']})")
    print(f"identical weights on both workers: {out['identical_weights']}")
    print(f"bytes per worker and step: {report['wire_bytes_per_step']:.0f} sent vs "
          f"{report['dense_bytes_per_step']:.0f} dense ({report['wire_reduction']:.1f}x less); compression with "
          f"index bits: conv {report['conv_compression']:.0f}x, fc {report['fc_compression']:.0f}x")
    if not out["identical_weights"]:
        raise RuntimeError("the two workers ended with different weights")

    data = load_digits()
    model = build_model(keras)
    model.set_weights(out["weights"])
    model.compile(metrics=["accuracy"], loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    flatbuffer = tflite_export.convert(model, representative_data=data.x_train)
    accuracy = np.mean(np.argmax(tflite_export.run(flatbuffer, data.x_test), 1) == data.y_test)
    print(f"float {model.evaluate(data.x_test, data.y_test, verbose=0)[1]:.4f}  int8 TFLite {accuracy:.4f}  "
          f"{len(flatbuffer)} bytes")
    return out


if __name__ == "__main__":
    if os.environ.get("ADACOMP_WORKER"):
        index, out_dir, epochs, crash = os.environ["ADACOMP_WORKER"].split(",")
        worker(int(index), Path(out_dir), int(epochs), int(crash))
    else:
        import argparse

        parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        parser.add_argument("--epochs", type=int, default=2)
        parser.add_argument("--crash-at-step", type=int, default=0, help="kill worker 1 after this step")
        # parse_known_args: the examples test runs this file in-process with pytest's own arguments.
        args, _ = parser.parse_known_args()
        main(args.epochs, args.crash_at_step)
