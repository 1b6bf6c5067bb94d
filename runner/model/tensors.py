"""Tensor declarations (ties, frozen tensors, buffers) and the index of unique tensors.

A tie makes two names one tensor: a plain tie registers the source Parameter object under the
target's name; a transposed tie registers a parametrization whose stored `original` *is* the
source Parameter, so the target reads source.T. Either way one tensor is stored, initialized,
optimized and saved, and its gradient is the sum of its uses.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from runner.errors import Problems, RunError, suggest
from runner.spec.types import BufferSpec, ModelSpec, TieSpec

TRANSPOSED_SUFFIX = ".parametrizations.{}.original"


class Transpose(nn.Module):
    """The parametrization behind transposed ties: the target reads the source with two dims swapped."""

    def __init__(self, dims: tuple[int, int] = (0, 1)):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


@dataclass(frozen=True)
class TransposedName:
    """A name under which a transposed tie reads the stored tensor: `dec.weight^T` is `dec.weight`,
    which reads the stored tensor with `dims` swapped."""

    name: str  # as displayed: dec.weight^T
    plain: str  # as init rules know it: dec.weight
    dims: tuple[int, int]


@dataclass(frozen=True)
class TensorEntry:
    """One unique tensor of a model, under its canonical (first) name, with every other name it has."""

    name: str
    aliases: tuple[str, ...]
    tensor: torch.Tensor
    kind: str  # parameter | frozen | buffer | non-persistent buffer
    module_type: type
    transposed: tuple[TransposedName, ...] = ()  # the names (of `names`) that read the tensor transposed

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def dims(self, name: str) -> tuple[int, int] | None:
        """Returns the dims `name` reads swapped from the stored tensor: None for a name that reads it as stored."""
        return next((t.dims for t in self.transposed if t.name == name), None)

    def rule_name(self, name: str) -> str:
        """Returns the name init rules select `name` by: `dec.weight` for a transposed tie's `dec.weight^T`."""
        return next((t.plain for t in self.transposed if t.name == name), name)

    def view(self, dims: tuple[int, int] | None) -> torch.Tensor:
        """Returns the tensor as a name with these swapped dims reads it (a view: writes reach the stored tensor)."""
        return self.tensor.transpose(*dims) if dims is not None else self.tensor

    @property
    def role(self) -> str:
        """weight | bias | buffer, for `kind:` selectors in init rules."""
        if self.kind.endswith("buffer"):
            return "buffer"
        return "bias" if self.name.rsplit(".", 1)[-1] == "bias" else "weight"


def display_name(name: str) -> str:
    """Returns a readable alias: `dec.parametrizations.weight.original` reads `dec.weight^T`."""
    if ".parametrizations." in name and name.endswith(".original"):
        owner, rest = name.split(".parametrizations.", 1)
        return f"{owner}.{rest[: -len('.original')]}^T"
    return name


def tensor_index(model: nn.Module) -> list[TensorEntry]:
    """Returns every unique parameter and buffer of `model`, parameters first, in registration order."""
    entries: list[TensorEntry] = []
    for named, kind_of in ((_all_parameters(model), _param_kind), (_all_buffers(model), _buffer_kind)):
        seen: dict[int, list[str]] = {}
        transposed: dict[int, list[TransposedName]] = {}
        owners: dict[int, tuple[torch.Tensor, nn.Module, str]] = {}
        for name, tensor, module, local in named:
            if id(tensor) not in seen:
                seen[id(tensor)], transposed[id(tensor)] = [], []
                owners[id(tensor)] = (tensor, module, local)
            seen[id(tensor)].append(display_name(name))
            transposed[id(tensor)].extend(_transposed_name(model, name))
        for key, names in seen.items():
            tensor, module, local = owners[key]
            entries.append(TensorEntry(names[0], tuple(names[1:]), tensor, kind_of(tensor, module, local), type(module),
                                       tuple(transposed[key])))
    return entries


def _transposed_name(model: nn.Module, name: str) -> list[TransposedName]:
    """Returns [the transposed name] when `name` is the stored tensor of a transposed tie, else []."""
    if ".parametrizations." not in name or not name.endswith(".original"):
        return []
    chain = model.get_submodule(name.rpartition(".")[0])  # the ParametrizationList of the target
    if len(chain) != 1 or not isinstance(chain[0], Transpose):
        return []
    owner, rest = name.split(".parametrizations.", 1)
    return [TransposedName(display_name(name), f"{owner}.{rest[: -len('.original')]}", tuple(chain[0].dims))]


def _all_parameters(model: nn.Module) -> Iterable[tuple[str, torch.Tensor, nn.Module, str]]:
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, param in module._parameters.items():
            if param is not None:
                yield _join(module_name, local), param, _owner(model, module_name, module), local


def _all_buffers(model: nn.Module) -> Iterable[tuple[str, torch.Tensor, nn.Module, str]]:
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, buffer in module._buffers.items():
            if buffer is not None:
                yield _join(module_name, local), buffer, module, local


def _owner(model: nn.Module, module_name: str, module: nn.Module) -> nn.Module:
    # A transposed tie's tensor lives in a ParametrizationList; the layer that uses it is two levels up.
    if ".parametrizations." in module_name:
        return model.get_submodule(module_name.split(".parametrizations.", 1)[0])
    return module


def _join(prefix: str, local: str) -> str:
    return f"{prefix}.{local}" if prefix else local


def _param_kind(tensor: torch.Tensor, _module: nn.Module, _local: str) -> str:
    return "parameter" if tensor.requires_grad else "frozen"


def _buffer_kind(_tensor: torch.Tensor, module: nn.Module, local: str) -> str:
    return "non-persistent buffer" if local in module._non_persistent_buffers_set else "buffer"


def matches(names: Iterable[str], pattern: str) -> bool:
    """True when any of the names matches the glob."""
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


# ---------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Declarations:
    """The model config's tensor declarations resolved to tensor names: what the plan decided."""

    ties: tuple[TieSpec, ...]
    buffers: tuple[tuple[str, bool], ...]  # (parameter name, persistent)
    frozen: tuple[str, ...]


def declare_tensors(model: nn.Module, spec: ModelSpec, problems: Problems) -> Declarations:
    """Checks the model spec's ties, buffers and frozen globs against `model`, applies them, and
    returns them resolved to names (so the real model gets them without matching again)."""
    before = len(problems.items)
    _check_ties(model, spec.ties, problems)
    if len(problems.items) > before:
        return Declarations(spec.ties, (), ())
    for tie in spec.ties:
        _apply_tie(model, tie)
    buffers = _resolve_buffers(model, spec.buffers, problems)
    for name, persistent in buffers:
        _make_buffer(model, name, persistent)
    frozen = _resolve_frozen(model, spec.frozen, problems)
    _freeze(model, frozen)
    return Declarations(spec.ties, buffers, frozen)


def apply_declarations(model: nn.Module, declared: Declarations) -> None:
    """Applies resolved declarations to a freshly built model, in the order the plan applied them."""
    for tie in declared.ties:
        _apply_tie(model, tie)
    for name, persistent in declared.buffers:
        _make_buffer(model, name, persistent)
    _freeze(model, declared.frozen)


def _check_ties(model: nn.Module, ties: tuple[TieSpec, ...], problems: Problems) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    targets: dict[str, int] = {}
    for index, tie in enumerate(ties):
        key = f"model.ties[{index}]"
        for role in ("target", "source"):
            name = getattr(tie, role)
            if name in buffers:
                problems.add(f"{key}.{role}", f"{name!r} is a buffer; only parameters can be tied")
            elif name not in params:
                problems.add(f"{key}.{role}", f"no parameter {name!r};{suggest(name, params) or ' see `python -m runner.inspect` for the names'}")
        if tie.target in targets:
            problems.add(f"{key}.target", f"{tie.target!r} is already the target of model.ties[{targets[tie.target]}]")
        targets[tie.target] = index
        if tie.target in params and tie.source in params:
            _check_tie_shapes(key, tie, params[tie.target], params[tie.source], problems)
    _check_tie_cycles(ties, problems)


def _check_tie_shapes(key: str, tie: TieSpec, target: torch.Tensor, source: torch.Tensor, problems: Problems) -> None:
    dims = tie.dims
    if tie.transpose is True and source.dim() != 2:
        problems.add(f"{key}.transpose", f"`true` transposes a 2-D tensor; source {tie.source!r} has shape {tuple(source.shape)}: name the two dims to swap, e.g. transpose: [{source.dim() - 2}, {source.dim() - 1}]")
        return
    if dims is not None and not all(-source.dim() <= d < source.dim() for d in dims):
        problems.add(f"{key}.transpose", f"dims {list(dims)} are out of range for source {tie.source!r} of shape {tuple(source.shape)} ({source.dim()} dims)")
        return
    source_shape = tuple(source.transpose(*dims).shape) if dims is not None else tuple(source.shape)
    if source_shape != tuple(target.shape):
        how = f" transposed on dims {list(dims)}" if dims is not None else ""
        problems.add(
            key,
            f"shape mismatch: target {tie.target!r} is {tuple(target.shape)} but source {tie.source!r}{how} gives {source_shape}",
        )


def _check_tie_cycles(ties: tuple[TieSpec, ...], problems: Problems) -> None:
    source_of = {tie.target: tie.source for tie in ties}
    for index, tie in enumerate(ties):
        seen = [tie.target]
        name = tie.source
        while name in source_of:
            if name in seen:
                problems.add(f"model.ties[{index}]", "ties form a cycle: " + " -> ".join([*seen, name]))
                return
            seen.append(name)
            name = source_of[name]
        if tie.source in source_of:
            problems.add(f"model.ties[{index}].source", f"{tie.source!r} is itself tied to {source_of[tie.source]!r}; tie to that tensor directly")


def _apply_tie(model: nn.Module, tie: TieSpec) -> None:
    owner_name, _, attr = tie.target.rpartition(".")
    owner = model.get_submodule(owner_name)
    source = model.get_parameter(tie.source)
    if tie.dims is not None:
        # unsafe: the parametrization changes the stored tensor's shape (source is the transpose).
        parametrize.register_parametrization(owner, attr, Transpose(tie.dims), unsafe=True)
        owner.parametrizations[attr].original = source
    else:
        setattr(owner, attr, source)


def _resolve_buffers(model: nn.Module, declared: tuple[BufferSpec, ...], problems: Problems) -> tuple[tuple[str, bool], ...]:
    entries = [e for e in tensor_index(model) if e.kind in ("parameter", "frozen")]
    resolved: list[tuple[str, bool]] = []
    for index, entry in enumerate(declared):
        key = f"model.buffers[{index}].match"
        hits = [e for e in entries if matches(e.names, entry.match)]
        if not hits:
            problems.add(key, f"{entry.match!r} matches no parameter")
        for hit in hits:
            if hit.aliases:
                problems.add(key, f"{hit.name!r} is tied ({', '.join(hit.aliases)}); a tied tensor cannot become a buffer")
            elif hit.name not in dict(resolved):
                resolved.append((hit.name, entry.persistent))
    return tuple(resolved)


def _make_buffer(model: nn.Module, name: str, persistent: bool) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    owner.register_buffer(attr, owner._parameters.pop(attr).detach(), persistent=persistent)


def _resolve_frozen(model: nn.Module, globs: tuple[str, ...], problems: Problems) -> tuple[str, ...]:
    entries = [e for e in tensor_index(model) if e.kind == "parameter"]
    frozen: list[str] = []
    for index, pattern in enumerate(globs):
        key = f"model.frozen[{index}]"
        hits = [e for e in entries if matches(e.names, pattern)]
        if not hits:
            problems.add(key, f"{pattern!r} matches no trainable parameter")
        for hit in hits:
            missed = [alias for alias in hit.names if not fnmatch.fnmatchcase(alias, pattern)]
            if missed and len(missed) < len(hit.names):
                problems.add(key, f"{pattern!r} freezes {hit.name!r} but not its tied alias {missed[0]!r}: a tied tensor is one tensor; freeze all its names or none")
            elif hit.name not in frozen:
                frozen.append(hit.name)
    return tuple(frozen)


def _freeze(model: nn.Module, names: tuple[str, ...]) -> None:
    by_name = {e.name: e.tensor for e in tensor_index(model)}
    for name in names:
        by_name[name].requires_grad_(False)


def verify_ties(model: nn.Module, ties: Iterable[TieSpec]) -> None:
    """Raises RunError unless every tie is still one tensor (checked by identity, not value)."""
    for tie in ties:
        source = model.get_parameter(tie.source)
        owner_name, _, attr = tie.target.rpartition(".")
        owner = model.get_submodule(owner_name)
        if tie.dims is not None:
            target = owner.parametrizations[attr].original
        else:
            target = owner._parameters.get(attr)
        if target is not source:
            raise RunError(f"tie broken: {tie.target!r} is no longer the same tensor as {tie.source!r}")


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Returns unique and naive (tied tensors counted at each use) parameter counts, and buffer sizes."""
    entries = tensor_index(model)
    params = [e for e in entries if e.kind in ("parameter", "frozen")]
    return {
        "unique": sum(e.tensor.numel() for e in params),
        "naive": sum(e.tensor.numel() * len(e.names) for e in params),
        "trainable": sum(e.tensor.numel() for e in params if e.kind == "parameter"),
        "frozen": sum(e.tensor.numel() for e in params if e.kind == "frozen"),
        "buffers": sum(e.tensor.numel() for e in entries if e.kind.endswith("buffer")),
    }
