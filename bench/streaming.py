"""Figure 19: runner's loader against a streaming library, WebDataset, on the same local images.

runner reads local files in their published formats into memory and serves batches by index;
streaming libraries (WebDataset, litdata, mosaicml-streaming) read samples in order from shards of
their own format, built for object storage. This measures what the streaming path costs on data
that is local and fits in memory, the case runner serves: the same 10,000 CIFAR-shaped images as
CIFAR-10's binary files (runner, `data=cifar10`) and as WebDataset tar shards of `.npy` pixels and
`.cls` labels (WebDataset's usual layout), each served by a DataLoader with 2 workers in batches of
128, with the same random crop, flip and normalize code on each batch. webdataset is a bench-only
dependency (`pip install -e '.[bench]'`); without it the figure says so and measures nothing.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

import runner
from bench.common import Row, alternate, timed

WORKERS, BATCH = 2, 128


def _shards(images: np.ndarray, labels: np.ndarray, root: Path, per_shard: int) -> list[str]:
    """Writes WebDataset tar shards: per sample `<key>.npy` (uint8 pixels, C x H x W) and `<key>.cls` (the label as text)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for first in range(0, len(images), per_shard):
        path = root / f"shard-{first // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for index in range(first, min(first + per_shard, len(images))):
                pixels = io.BytesIO()
                np.save(pixels, images[index], allow_pickle=False)
                for suffix, payload in (("npy", pixels.getvalue()), ("cls", str(int(labels[index])).encode())):
                    member = tarfile.TarInfo(f"{index:06d}.{suffix}")
                    member.size = len(payload)
                    tar.addfile(member, io.BytesIO(payload))
        paths.append(str(path))
    return paths


def streaming_library(repeats: int, smoke: bool) -> list[Row]:
    """19. batches/s of data.loader reading CIFAR-10's binary files over WebDataset reading the same images from tar shards."""
    figure, size = "19. batches/s: data.loader (2 workers) / WebDataset (2 workers), same images and transforms", "CIFAR-shaped (10,000 images), batch 128"
    try:
        import webdataset as wds
    except ImportError:
        return [Row(figure, size, float("nan"), "(report)", "webdataset is not installed: pip install -e '.[bench]'")]
    from bench.figures import _cifar_files
    from runner.data.images import read_cifar
    from runner.data.loader import LoaderBatches
    from runner.data.sources import load_data

    with tempfile.TemporaryDirectory() as tmp:
        root = _cifar_files(Path(tmp) / "cifar10", 80 if smoke else 2000)
        data = load_data(runner.compose(["experiment=resnet18_cifar10", f"data.root={root}"]).data)
        ours = LoaderBatches(data.train_x, data.train_y, BATCH, 0, data.transform, torch.device("cpu"), num_workers=WORKERS)
        images, labels, _, _ = read_cifar(root, "cifar10")  # the same images, as runner reads them
        urls = _shards(images, labels, Path(tmp) / "shards", per_shard=len(images) // 4)
        seeds = iter(range(10**9))

        def augment(batch):  # the default collation's tensors, then the same transform code as runner's workers run
            images, labels = batch
            x = torch.from_numpy(np.asarray(images)).float().div_(255)
            return data.transform(x, torch.Generator().manual_seed(next(seeds))), torch.as_tensor(labels)

        pipeline = (wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False).shuffle(1000).decode().to_tuple("npy", "cls")
                    .batched(BATCH, partial=True).map(augment))
        theirs = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=WORKERS)
        epochs = iter(range(10**9))
        served = {"ours": 0, "theirs": 0}

        def rate(side: str, epoch) -> float:
            batches: list = []
            seconds = timed(lambda: batches.extend(epoch()))
            served[side] = sum(len(y) for _, y in batches)
            return len(batches) / seconds

        a, b = alternate(lambda: rate("ours", lambda: ours.epoch(next(epochs))), lambda: rate("theirs", lambda: theirs), repeats)
    assert served["ours"] == served["theirs"] == len(data.train_x), served  # both served every training image once an epoch
    return [Row(figure, size, a / b, "(report)",
                "4 shards of .npy + .cls, shard and 1,000-sample shuffle, decode, batch then the same transforms in the workers; "
                "ours: index_select of each batch's rows from memory. Both serve every image once an epoch")]
