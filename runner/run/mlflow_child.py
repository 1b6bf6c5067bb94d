"""The MLflow logging process of `+tracker=mlflow` (runner.tracking runs this code with -c; not a module to import).

It imports MLflow and nothing of runner or torch. It reads metrics as JSON
lines on stdin (`[[key, value, timestamp_ms, step], ...]` per line), and logs everything that has
arrived since its last call in one MLflow batch. Its work (SQLAlchemy inserts, about 0.3 ms a
metric) would otherwise hold the training process's GIL. On a failure it says why on stderr
once, keeps reading (so the writer never blocks on a full pipe) and exits 1 at the end of input.
"""

import json
import os
import select
import sys

BATCH = 1000  # MLflow's limit on the metrics of one log_batch


def main(uri: str, run_id: str) -> int:
    # Only the CPU training leaves idle (Linux's SCHED_IDLE; elsewhere the lowest priority): on a busy
    # machine the log lags, and the end of the run waits for it, instead of the steps.
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client, failed, stream = MlflowClient(tracking_uri=uri), False, sys.stdin.buffer
    while True:
        line = stream.readline()
        if not line:
            return 1 if failed else 0
        lines = [line]
        while select.select([stream], [], [], 0)[0]:  # whatever else is waiting goes in the same batch
            more = stream.readline()
            if not more:
                break
            lines.append(more)
        if failed:
            continue
        metrics = [Metric(key, value, timestamp, step) for text in lines for key, value, timestamp, step in json.loads(text)]
        try:
            for start in range(0, len(metrics), BATCH):
                client.log_batch(run_id, metrics=metrics[start : start + BATCH], synchronous=True)
        except Exception as error:  # noqa: BLE001 - said once; the run directory has every record
            failed = True
            print(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
