"""Image transforms declared in `data.transforms.train` / `data.transforms.eval`, applied to whole
batches of (N, C, H, W) tensors on the device they are served from.

Random transforms draw from a generator seeded by (seed, epoch, batch), so a run resumed in the
middle of an epoch augments exactly as an uninterrupted one. Given `part=(start, rows)`, `x` holds
the rows from `start` of a batch of `rows` (a DDP rank's shard, runner.data.loader): a random
transform draws for the whole batch and keeps its part's draws, so each image is augmented as it
would be in the whole batch. `data.shape` is the shape of a stored image; `resize` and
`center_crop` change it, and the model sees what both lists end with (they must agree:
`Pipeline.shape`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

# A shard's place in its batch: (first row, the batch's rows); None: `x` is the whole batch.
Part = tuple[int, int] | None


def _draw(draw: Callable[[int], torch.Tensor], rows: int, part: Part) -> torch.Tensor:
    """`draw(k)` draws k values, one an image; returns those of the `rows` images in `part` of their batch."""
    if part is None:
        return draw(rows)
    start, whole = part
    return draw(whole)[start : start + rows]


def _size(size: Any, key: str = "size") -> tuple[int, int] | int:
    """An int, or [height, width]: sizes > 0."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        return (size[0], size[1])
    raise ValueError(f"{key}: expected a size > 0 or [height, width], got {size!r}")


class _Sized:
    """A deterministic transform that takes one `size`: an int, or [height, width]."""

    random = False

    def __init__(self, size: Any):
        self.size = _size(size)

    def settings(self) -> dict:
        return {"size": list(self.size) if isinstance(self.size, tuple) else self.size}


class Resize(_Sized):
    """torchvision's Resize(size) on image tensors (bilinear, antialiased): [height, width], or an int for
    the shorter side, the other keeping the aspect ratio (rounded down, as torchvision does)."""

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, height, width = shape
        if isinstance(self.size, tuple):
            return (channels, *self.size)
        if height <= width:
            return (channels, self.size, int(self.size * width / height))
        return (channels, int(self.size * height / width), self.size)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None, part: Part = None) -> torch.Tensor:
        out = self.shape(tuple(x.shape[1:]))[1:]
        if tuple(x.shape[2:]) == out:
            return x
        return torch.nn.functional.interpolate(x, size=out, mode="bilinear", align_corners=False, antialias=True)


class CenterCrop(_Sized):
    """torchvision's CenterCrop(size): the middle [height, width] (or size x size), the top-left corner at
    round((H - height) / 2), round((W - width) / 2). A crop larger than the image is refused."""

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, height, width = shape
        crop = self.size if isinstance(self.size, tuple) else (self.size, self.size)
        if crop[0] > height or crop[1] > width:
            raise ValueError(f"size: {list(crop)} is larger than the {height}x{width} images it gets")
        return (channels, *crop)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None, part: Part = None) -> torch.Tensor:
        _, height, width = self.shape(tuple(x.shape[1:]))
        top, left = int(round((x.shape[2] - height) / 2.0)), int(round((x.shape[3] - width) / 2.0))
        return x[:, :, top : top + height, left : left + width]


class RandomCrop:
    """torchvision's RandomCrop(size of the image, padding): zero padding on every side, then a crop of
    the original size at a uniformly random offset per image."""

    random = True

    def __init__(self, padding: int = 4):
        if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
            raise ValueError(f"padding: expected an integer >= 0, got {padding!r}")
        self.padding = padding

    def settings(self) -> dict:
        return {"padding": self.padding}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None, part: Part = None) -> torch.Tensor:
        n, channels, height, width = x.shape
        p = self.padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        def offsets() -> torch.Tensor:  # one per image: the top rows first, then the left columns
            return _draw(lambda k: torch.randint(0, 2 * p + 1, (k,), generator=generator), n, part).to(x.device)

        top, left = offsets(), offsets()
        rows = (top[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        return padded[batch, torch.arange(channels, device=x.device)[None, :, None, None], rows, cols]


class HorizontalFlip:
    """torchvision's RandomHorizontalFlip(p): each image mirrored left to right with probability p."""

    random = True

    def __init__(self, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def settings(self) -> dict:
        return {"p": self.p}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None, part: Part = None) -> torch.Tensor:
        flip = (_draw(lambda k: torch.rand(k, generator=generator), len(x), part) < self.p).to(x.device)
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


class Normalize:
    """(x - mean[c]) / std[c] per channel; mean and std null: computed once from the training split
    (over its images and pixels, std with N in the denominator)."""

    random = False

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        for key, value in (("mean", mean), ("std", std)):
            if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value)):
                raise ValueError(f"{key}: expected a list of numbers (one per channel) or null, got {value!r}")
        if std is not None and any(v <= 0 for v in std):
            raise ValueError(f"std: expected numbers > 0, got {list(std)}")
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float64)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float64)

    def settings(self) -> dict:
        """The statistics it normalizes with, given or fitted: what a saved config holds so that the run's
        evaluation, resume and predictions normalize as training did, without the training data."""
        if self.needs_fit:
            raise ValueError("normalize has not been fitted")
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @property
    def needs_fit(self) -> bool:
        return self.mean is None or self.std is None

    def fit(self, train_x: torch.Tensor, fitted: dict) -> None:
        if self.needs_fit:
            mean, std = fitted.setdefault("channel_stats", channel_stats(train_x))
            self.mean = mean if self.mean is None else self.mean
            self.std = std if self.std is None else self.std

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None, part: Part = None) -> torch.Tensor:
        mean = self.mean.to(x.device, x.dtype)[None, :, None, None]
        std = self.std.to(x.device, x.dtype)[None, :, None, None]
        return (x - mean) / std


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (N in the denominator) of (N, C, H, W) images, summed in float64 a
    channel at a time: no float64 copy of the whole training set."""
    means, stds = [], []
    for channel in images.unbind(1):
        mean = channel.sum(dtype=torch.float64) / channel.numel()
        means.append(mean)
        stds.append(((channel - mean.to(channel.dtype)).double().square().sum() / channel.numel()).sqrt())
    return torch.stack(means).cpu(), torch.stack(stds).cpu()


# `data.transforms` names -> the class (its constructor's arguments are the item's other keys).
TRANSFORMS: dict[str, type] = {"random_crop": RandomCrop, "horizontal_flip": HorizontalFlip, "resize": Resize, "center_crop": CenterCrop,
                               "normalize": Normalize}


@dataclass
class Pipeline:
    """A list of transforms, applied in order."""

    steps: list[Any]

    @property
    def random(self) -> bool:
        return any(step.random for step in self.steps)

    @property
    def needs_fit(self) -> bool:
        """Whether some step still has to learn from the training images (normalize without its statistics)."""
        return any(getattr(step, "needs_fit", False) for step in self.steps)

    def fit(self, train_x: torch.Tensor, fitted: dict) -> None:
        """Fits the steps that learn from the training images; `fitted` shares what they compute."""
        for step in self.steps:
            if hasattr(step, "fit"):
                step.fit(train_x, fitted)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, part: Part = None) -> torch.Tensor:
        for step in self.steps:
            x = step(x, generator, part)
        return x

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of an image after the steps, from the shape of a stored one (a step that cannot take it raises ValueError)."""
        for step in self.steps:
            shape = step.shape(shape) if hasattr(step, "shape") else shape
        return shape

    def settings(self) -> list[dict]:
        """The list as a config item by item, {name: ..., <argument>: value}, fitted values included."""
        names = {cls: name for name, cls in TRANSFORMS.items()}
        return [{"name": names[type(step)], **step.settings()} for step in self.steps]


def make_pipeline(items: Sequence[Any]) -> Pipeline:
    """Builds the transforms of a checked `data.transforms.<split>` list ({name: ..., <arg>: ...} or a name)."""
    steps = []
    for item in items:
        item = {"name": item} if isinstance(item, str) else dict(item)
        steps.append(TRANSFORMS[item.pop("name")](**item))
    return Pipeline(steps)


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator of one training batch's random transforms: from (seed, epoch, batch) alone."""
    return torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_003 + batch)
