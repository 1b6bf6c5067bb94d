"""python -m bench.io_load DIR [PERIOD]: writes checkpoint-like directories into DIR until killed, one every PERIOD
seconds (default 0.015, a digits epoch): 4 files (2 of 200 kB), each fsynced, the directory fsynced, the fourth-newest
directory removed. Figure 11's reference row runs a plain PyTorch loop beside it: what this machine's file system
costs a training process that does no I/O itself."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path


def main(root: Path, period: float) -> None:
    payload, count = os.urandom(200_000), 0
    while True:
        directory = root / f"step_{count:07d}"
        directory.mkdir(parents=True)
        for index in range(4):
            with open(directory / str(index), "wb") as handle:
                handle.write(payload if index < 2 else b"{}")
                handle.flush()
                os.fsync(handle.fileno())
        descriptor = os.open(directory, os.O_RDONLY)
        os.fsync(descriptor)
        os.close(descriptor)
        if count >= 3:
            shutil.rmtree(root / f"step_{count - 3:07d}")
        count += 1
        time.sleep(period)


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.015)
