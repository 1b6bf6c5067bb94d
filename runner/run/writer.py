"""Logging off the training thread: one writer thread owns metrics.jsonl and the TensorBoard event file.

The training thread hands over finished records (Python numbers) and histogram summaries (small
CPU tensors computed on the device, see `histogram_summaries`); the writer turns them into JSON
lines and TensorBoard events. Records are written in the order they were handed over. Each batch
of lines goes to metrics.jsonl in one `os.write` of whole lines, so a killed run leaves no torn
line and loses at most what was still queued. A failed write is raised on the training thread at
its next hand-over (or at close), as RunDirWriteError naming the file.

TensorBoard events are written here, not by `torch.utils.tensorboard.SummaryWriter`: its writer
computes the CRC-32C of every record in pure Python (about 170 us per KB on the development
machine, holding the GIL the training thread needs); this one frames the same Event protos with
google-crc32c's C implementation (0.3 us per KB) and puts one Event per logged step.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import torch

from runner.run.directory import RunDir, start_metrics, writing

HISTOGRAM_BINS = 64
_CLOSE = object()
_file_numbers = itertools.count()


def _masked_crc(data: bytes) -> bytes:
    """TFRecord's masked CRC-32C of data, as 4 little-endian bytes."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


class EventFile:
    """A TensorBoard event file: Event protos framed as TFRecords (length, its masked CRC, data, its masked CRC)."""

    def __init__(self, run_dir: Path):
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event, self._summary, self._histogram = event_pb2.Event, summary_pb2.Summary, summary_pb2.HistogramProto
        # The name TensorBoard looks for; the counter keeps two files of one process apart.
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_numbers):04d}"
        self.path = run_dir / name
        self._handle = open(self.path, "ab")
        self._pending: list[bytes] = []
        self._add(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def restart(self, step: int) -> None:
        """Marks a resumed run: TensorBoard drops what earlier files logged after `step` (a SessionLog START)."""
        from tensorboard.compat.proto import event_pb2

        self._add(self._event(wall_time=time.time(), step=step + 1, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Adds one event holding every scalar of a step."""
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
        self._add(self._event(wall_time=time.time(), step=step, summary=summary))

    def summary(self, step: int, summary: Any) -> None:
        """Adds one event holding a Summary proto made elsewhere (the HParams plugin's)."""
        self._add(self._event(wall_time=time.time(), step=step, summary=summary))

    def histograms(self, step: int, tags: list[str], numels: list[int], stats: torch.Tensor) -> None:
        """Adds one event with a histogram per tag, from `histogram_summaries`' rows."""
        values = []
        for tag, numel, row in zip(tags, numels, stats.tolist()):
            low, high, total, squares, counts = row[0], row[1], row[2], row[3], row[4:]
            width = (high - low) / len(counts)
            limits = [low + width * (i + 1) for i in range(len(counts))]
            histogram = self._histogram(min=low, max=high, num=numel, sum=total, sum_squares=squares,
                                        bucket_limit=limits, bucket=counts)
            values.append(self._summary.Value(tag=tag, histo=histogram))
        self._add(self._event(wall_time=time.time(), step=step, summary=self._summary(value=values)))

    def _add(self, event: Any) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._pending.append(header + _masked_crc(header) + data + _masked_crc(data))

    def flush(self) -> None:
        if self._pending:
            self._handle.write(b"".join(self._pending))
            self._pending.clear()
        self._handle.flush()

    def close(self) -> None:
        self.flush()
        self._handle.close()


@torch.no_grad()
def histogram_summaries(tensors: list[torch.Tensor], bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """Returns one row per tensor, on the tensors' device: min, max, sum, sum of squares, then
    `bins` counts over equal-width bins from min to max (the last bin includes max).

    Device ops only (no host sync): the caller moves the small result to the host once.
    """
    rows = []
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        if not flat.is_floating_point() or flat.dtype in (torch.bfloat16, torch.float16):
            flat = flat.float()
        low, high = torch.aminmax(flat)
        width = (high - low).clamp_min(torch.finfo(flat.dtype).tiny) / bins
        index = ((flat - low) / width).long().clamp_(0, bins - 1)
        counts = torch.bincount(index, minlength=bins)
        sums = torch.stack([flat.sum(dtype=torch.float64), (flat * flat).sum(dtype=torch.float64)])
        rows.append(torch.cat([torch.stack([low, high]).double(), sums, counts.double()]))
    return torch.stack(rows)


class Writer:
    """The writer thread: metrics.jsonl (every record) and TensorBoard (when `tensorboard`), in hand-over order."""

    def __init__(self, run_dir: Path, truncate_after_step: int | None = None, tensorboard: bool = False, tracker: Any = None):
        """A fresh run starts metrics.jsonl anew; a resumed one keeps what was logged up to its checkpoint.
        `tracker` (runner.tracking) gets each batch of records after they are written."""
        self.run_dir, self.path, self.tracker = run_dir, RunDir(run_dir).metrics, tracker
        start_metrics(self.path, truncate_after_step)
        with writing(run_dir):
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self.events = EventFile(run_dir) if tensorboard else None
            if self.events is not None and truncate_after_step is not None:
                self.events.restart(truncate_after_step)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="runner-writer", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        """Hands a record over (its values are Python numbers); raises the writer's error, if any."""
        self._raise()
        self._queue.put(("record", record))

    def histograms(self, step: int, tags: list[str], numels: list[int], stats: torch.Tensor) -> None:
        """Hands over histogram summaries (a CPU tensor from `histogram_summaries`)."""
        self._raise()
        if self.events is not None:
            self._queue.put(("histograms", (step, tags, numels, stats)))

    def close(self) -> None:
        """Writes what is queued, closes the files and raises the writer's error, if any."""
        if self._thread.is_alive():
            self._queue.put(_CLOSE)
            self._thread.join()
        try:
            os.close(self._fd)
            if self.events is not None:
                with writing(self.run_dir):
                    self.events.close()
        finally:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        closing = False
        while not closing:
            batch = [self._queue.get()]
            while True:  # everything queued meanwhile goes out in the same write
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines, records = [], []
            try:
                for item in batch:
                    if item is _CLOSE:
                        closing = True
                        continue
                    kind, payload = item
                    if kind == "record":
                        lines.append(json.dumps(payload) + "\n")
                        records.append(payload)
                        if self.events is not None:
                            self._scalars(payload)
                    else:
                        self.events.histograms(*payload)
                if lines:
                    data = "".join(lines).encode()
                    with writing(self.run_dir, self.path):
                        while data:  # a short write (a full disk) continues or raises
                            data = data[os.write(self._fd, data) :]
                if self.events is not None:
                    with writing(self.run_dir, self.events.path):
                        self.events.flush()
                if self.tracker is not None and records:
                    self.tracker.log(records)  # after the files: the run directory is the record of truth
            except BaseException as error:  # noqa: BLE001 - handed to the training thread
                self._error = error  # and stop: what is queued after a failed write is not written
                closing = True

    def _scalars(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "train":
            values = {(key if "/" in key else f"train/{key}"): value for key, value in record.items()
                      if key not in ("kind", "step", "epoch") and isinstance(value, (int, float))}
        elif kind == "eval":
            values = {f"eval/{key}": value for key, value in record.items()  # val_loss and each val_<metric>
                      if key.startswith("val_") and not key.endswith("_ema") and isinstance(value, (int, float))}
        else:
            return
        if values:
            self.events.scalars(record["step"], values)


# Summary keys shown as HParams metrics, by the scalar tag the run logged them under.
HPARAMS_METRICS = {"eval/val_loss": "val_loss", "eval/val_accuracy": "val_accuracy"}


def write_hparams(run_dir: Path, overrides: list[str], summary: dict[str, Any]) -> Path:
    """Writes a sweep job's overrides and final metrics in TensorBoard's HParams format, in an event
    file of its own in the job's directory, so `tensorboard --logdir <sweep dir>` compares the jobs
    in its HParams dashboard (a metric's value there is the last of the run's scalars of its tag)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from torch.utils.tensorboard.summary import hparams

    params: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(overrides):  # Hydra's own reading: `off` is text
        value = override.value()
        if isinstance(value, bool):
            value = str(value).lower()  # shown as true/false, not as the number torch would make of it
        params[override.key_or_group] = value if isinstance(value, (int, float, str)) else override.get_value_element_as_str()
    metrics = {tag: summary[key] for tag, key in HPARAMS_METRICS.items() if summary.get(key) is not None}
    events = EventFile(run_dir)
    with writing(run_dir, events.path):
        for proto in hparams(params, metrics):
            events.summary(summary.get("steps") or 0, proto)
        events.close()
    return events.path


class NullWriter:
    """Stands in for Writer on ranks that do not write (DDP ranks other than 0)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def histograms(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass
