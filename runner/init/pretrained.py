"""`fn: pretrained`: tensors copied from a safetensors file, or from a run or checkpoint of ours, by name.

    - {match: "fc1.*", fn: pretrained, path: backbone.safetensors, rename: [fc1, "0"]}

Each tensor the rule sets is looked up under its canonical name, with `rename: [ours, theirs]`
swapping the leading `ours` for `theirs` (`fc1.weight` -> `0.weight`; `fc1.` means `fc1`). A tied
tensor is read once; a file that also holds it under another of its names must hold the same
values there (the transpose, for a transposed tie), or the rule is refused rather than one key
ignored. A run directory means its newest checkpoint's model.safetensors (its SHA-256 checked
against the manifest). Only safetensors is read: a pickle file is refused, since unpickling can
run code.

`check` reads headers (names, shapes, dtypes), and the values of tied tensors a file holds twice,
and reports every problem before any work; `read` returns the tensors for `prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load

from runner.errors import ConfigError, Problem, Problems, RunError, suggest
from runner.init.apply import some_names
from runner.model.tensors import TRANSPOSED_SUFFIX, display_name
from runner.registry.init_functions import init_functions
from runner.registry.tables import DTYPES
from runner.run import checkpoint
from runner.spec.types import Rule, TieSpec

# The suffixes torch.save's files go by; a file starting like a pickle or a zip (torch.save) is refused too.
PICKLED = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
CONVERT = ("convert it once where you trust it: safetensors.torch.save_file(torch.load(path, weights_only=True), "
           "'weights.safetensors')")
DTYPE_NAMES = {code: str(dtype).removeprefix("torch.") for dtype, code in checkpoint.SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class Source:
    """Where one tensor's values come from: the file and the key in it."""

    file: Path
    key: str

    @property
    def label(self) -> str:
        return f"pretrained {self.file} [{self.key}]"


def file_key(name: str, rename: tuple[str, str] | None) -> str | None:
    """Returns the key a tensor is read from: its name, its leading `ours` swapped for `theirs`
    (on dot boundaries; either may be empty, and a trailing dot changes nothing), or None when
    the name is not under `ours`."""
    if rename is None:
        return name
    ours, theirs = (prefix.rstrip(".") for prefix in rename)
    if ours and name != ours and not name.startswith(ours + "."):
        return None
    rest = name[len(ours):].lstrip(".") if ours else name
    return ".".join(part for part in (theirs, rest) if part)


def check(plan: Any, problems: Problems, kinds: tuple[str, ...] | None = None) -> dict[str, Source]:
    """Returns tensor name -> Source for every tensor (of `kinds`, when given) a pretrained rule sets,
    adding a problem (naming the rule) for each unreadable file, missing key, shape or dtype that
    does not fit. Headers only."""
    sources: dict[str, Source] = {}
    for rule, tensors in _by_rule(plan, kinds):
        key = f"init.rules[{rule.index}]"
        args = dict(rule.args)
        file, header = _open(str(args["path"]), f"{key}.path", problems)
        if header is None:
            continue
        missing: list[tuple[str, str]] = []
        outside: list[str] = []
        twice: list[tuple[Any, str]] = []
        for tensor in tensors:
            wanted = file_key(tensor.name, args.get("rename"))
            if wanted is None:
                outside.append(repr(tensor.name))
                continue
            if wanted not in header:
                missing.append((tensor.name, wanted))
                continue
            shape, dtype = header[wanted]
            floating = tensor.dtype.startswith(("float", "bfloat"))
            want_dtype = plan.spec.trainer.dtype if floating else tensor.dtype  # placement casts floating tensors only
            if shape != tensor.shape:
                problems.add(key, f"{file} [{wanted}] has shape {shape}; {tensor.name!r} has {tensor.shape}")
            elif dtype != want_dtype:
                where = " (trainer.dtype)" if floating else ""
                other = f", or set trainer.dtype={dtype}" if floating and dtype in DTYPES else ""
                problems.add(key, f"{file} [{wanted}] is {dtype}; {tensor.name!r} is {want_dtype}{where}: convert the file{other}")
            else:
                sources[tensor.name] = Source(file, wanted)
                if tensor.aliases:
                    twice.append((tensor, wanted))
        if twice:
            _check_tied(file, header, twice, args.get("rename"), _transposed_views(plan.declarations.ties), key, problems)
        if outside:
            ours = args["rename"][0].rstrip(".")
            problems.add(f"{key}.rename", f"the rule sets {some_names(outside)}, which are not {ours!r} nor under {ours + '.'!r}; narrow `match` to tensors under {ours!r}")
        if missing:
            (name, first), more = missing[0], len(missing) - 1
            hint = suggest(first, list(header)) or f" it holds: {', '.join(list(header)[:8])}{' ...' if len(header) > 8 else ''}"
            also = f" (nor {more} more the rule sets)" if more else ""
            problems.add(key, f"{file} has no tensor {first!r} for {name!r}{also};{hint}")
    return sources


def read(plan: Any, kinds: tuple[str, ...] | None = None) -> dict[str, tuple[torch.Tensor, Source]]:
    """Returns tensor name -> (values, source) for the tensors pretrained rules set (of `kinds`, when
    given), or raises ConfigError with every problem `check` finds."""
    problems = Problems()
    sources = check(plan, problems, kinds)
    problems.raise_if_any()
    values: dict[str, tuple[torch.Tensor, Source]] = {}
    for file in sorted({s.file for s in sources.values()}):
        tensors = _load(file, [s.key for s in sources.values() if s.file == file])
        values.update({name: (tensors[s.key], s) for name, s in sources.items() if s.file == file})
    return values


def _transposed_views(ties: tuple[TieSpec, ...]) -> dict[str, TieSpec]:
    """Returns each name a transposed tie's target goes by in the tensor index -> its tie."""
    views: dict[str, TieSpec] = {}
    for tie in ties:
        if tie.dims is not None:
            owner, _, attr = tie.target.rpartition(".")
            views[tie.target] = views[display_name(owner + TRANSPOSED_SUFFIX.format(attr))] = tie
    return views


def _check_tied(file: Path, header: dict[str, tuple[tuple[int, ...], str]], tied: list[tuple[Any, str]],
                rename: tuple[str, str] | None, views: dict[str, TieSpec], key: str, problems: Problems) -> None:
    """Adds a problem for each tied tensor whose other name the file also holds with other values
    (for a transposed target: other than the loaded values transposed); only one key is loaded."""
    pairs = []
    for tensor, wanted in tied:
        for alias in tensor.aliases:
            tie = views.get(alias)
            name = tie.target if tie is not None else alias
            other = file_key(name, rename)
            if other is not None and other != wanted and other in header:
                pairs.append((tensor.name, wanted, name, other, tie.dims if tie is not None else None))
    if not pairs:
        return
    with safe_open(str(file), framework="pt") as handle:
        for name, wanted, alias, other, dims in pairs:
            loaded, held = handle.get_tensor(wanted), handle.get_tensor(other)
            expected = loaded.transpose(*dims) if dims is not None else loaded
            if expected.shape != held.shape or expected.dtype != held.dtype or not torch.equal(expected, held):
                how = f"{name!r} transposed on dims {list(dims)}" if dims is not None else f"the same tensor as {name!r}"
                problems.add(key, f"{file} holds two different tensors, [{wanted}] for {name!r} and [{other}] for {alias!r}, "
                                  f"but here {alias!r} is {how}: only [{wanted}] would be read; make the two equal in the file, or drop one")


def _reads_file(fn: str) -> bool:
    function = init_functions().get(fn)  # None for a modifier
    return function is not None and function.reads_file


def _by_rule(plan: Any, kinds: tuple[str, ...] | None) -> Iterator[tuple[Rule, list[Any]]]:
    rules: dict[int, tuple[Rule, list[Any]]] = {}
    for tensor in plan.tensors:
        if tensor.rule is not None and _reads_file(tensor.rule.fn) and (kinds is None or tensor.kind in kinds):
            rules.setdefault(tensor.rule.index, (tensor.rule, []))[1].append(tensor)
    return iter(rules.values())


def weights_file(path: Path) -> Path:
    """Returns the safetensors file `path` means (a file, or a run directory's or checkpoint's
    model.safetensors); raises ValueError saying why it cannot be read."""
    if not path.exists():
        raise ValueError(f"no such file or directory: {path}")
    if path.is_dir():
        try:
            return checkpoint.latest_checkpoint(path) / "model.safetensors"
        except RunError:
            raise ValueError(f"{path} is a directory but neither a run directory nor a checkpoint of ours "
                             "(expected checkpoints/step_*/manifest.json or manifest.json)") from None
    with open(path, "rb") as handle:
        start = handle.read(9)
    if path.suffix in PICKLED or start[:1] == b"\x80" or start[:4] == b"PK\x03\x04":
        raise ValueError(f"{path} is a pickle (torch.save) file; only safetensors is read, since unpickling can run code: {CONVERT}")
    return path


def _open(path: str, key: str, problems: Problems) -> tuple[Path, dict[str, tuple[tuple[int, ...], str]] | None]:
    """Returns the file and its header (key -> (shape, dtype name)), or adds a problem and returns no header."""
    try:
        file = weights_file(Path(path))
        with safe_open(str(file), framework="pt") as handle:
            header = {}
            for name in handle.keys():
                part = handle.get_slice(name)
                header[name] = (tuple(part.get_shape()), DTYPE_NAMES.get(part.get_dtype(), part.get_dtype()))
        return file, header
    except ValueError as error:
        problems.add(key, str(error))
    except (SafetensorError, OSError) as error:
        problems.add(key, f"{path} is not a readable safetensors file ({error})")
    return Path(path), None


def _load(file: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """Returns the named tensors of a file; a checkpoint of ours is verified against its manifest first."""
    if (file.parent / "manifest.json").is_file():
        return load(checkpoint.read_verified(file.parent, file.name))
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in keys}
    except (SafetensorError, OSError) as error:
        raise ConfigError([Problem("init.rules", f"{file} could not be read ({error})")]) from None
