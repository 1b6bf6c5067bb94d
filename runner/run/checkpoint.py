"""Checkpoints that are safe to load and complete enough to resume exactly.

Layout of checkpoints/step_NNNNNNN/:
  model.safetensors      unique parameters and persistent buffers (each tied tensor once;
                         the tie map is in the header metadata)
  optimizer.safetensors  optimizer state tensors and the torch/CUDA RNG states
  state.json             step, epoch, position in the epoch, optimizer param groups, scheduler
                         state, python and numpy RNG states, the resolved config
  manifest.json          SHA-256 of every file above, verified on load

Nothing here is ever unpickled: tensors come from safetensors, everything else from JSON.
A directory is written under a temporary name, flushed, then renamed into place, so the
latest complete checkpoint is always the newest `step_*` directory. Training copies what a
checkpoint holds at its step (`snapshot`) and a background thread writes, hashes and fsyncs it
(runner.run.saver.BackgroundSaver).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load
from torch import nn

from runner.errors import RunError
from runner.model.tensors import tensor_index
from runner.run.directory import RunDir, writing

PREFIX = "step_"
FILES = ("model.safetensors", "optimizer.safetensors", "state.json")


@dataclass(frozen=True)
class Position:
    """Where training stands: optimizer steps done, and the epoch and batch index to continue from."""

    step: int
    epoch: int
    batch: int


def saved_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Returns canonical name -> tensor for everything a checkpoint stores (no non-persistent buffers)."""
    return {e.name: e.tensor for e in tensor_index(model) if e.kind != "non-persistent buffer"}


def tie_map(model: nn.Module) -> dict[str, str]:
    """Returns alias -> canonical name for every tied tensor."""
    return {alias: e.name for e in tensor_index(model) for alias in e.aliases}


# safetensors' dtype names, in the order of its Dtype enum (its writer lays tensors out by that
# order, highest first, then by name). Only the dtypes this torch has are listed.
SAFETENSORS_DTYPES = {
    getattr(torch, name): code for name, code in (
        ("bool", "BOOL"), ("uint8", "U8"), ("int8", "I8"), ("float8_e5m2", "F8_E5M2"), ("float8_e4m3fn", "F8_E4M3"),
        ("int16", "I16"), ("uint16", "U16"), ("float16", "F16"), ("bfloat16", "BF16"), ("int32", "I32"),
        ("uint32", "U32"), ("float32", "F32"), ("float64", "F64"), ("int64", "I64"), ("uint64", "U64"),
    ) if hasattr(torch, name)
}
_RANK = {dtype: rank for rank, dtype in enumerate(SAFETENSORS_DTYPES)}


@dataclass(frozen=True)
class Packed:
    """A safetensors file's content, laid out at snapshot time: its header, and every tensor's bytes
    copied into one host buffer, in the order and at the offsets the header gives."""

    header: bytes  # the 8-byte length, then the JSON header padded to a multiple of 8
    data: torch.Tensor  # uint8, CPU

    def chunks(self) -> tuple[bytes, Any]:
        return self.header, self.data.numpy()


def pack(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Packed:
    """Returns the tensors in safetensors' layout, copied (one `torch.cat`, native code) to the host.

    The layout is the one `safetensors.torch.save` writes (tensors by its dtype order, highest first,
    then name; compact JSON header padded with spaces), so the bytes are the same as its output, and
    `safetensors.torch.load` reads them. Building it here costs one copy and no per-tensor Python
    conversion, which matters on the training thread (see docs/run-directory.md).
    """
    unstorable = [f"{name} ({t.dtype})" for name, t in tensors.items() if t.dtype not in _RANK]
    if unstorable:
        raise RunError(f"safetensors cannot store {', '.join(unstorable)}; no checkpoint written")
    order = sorted(tensors, key=lambda name: (-_RANK[tensors[name].dtype], name))
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset, parts = 0, []
    for name in order:
        tensor = tensors[name].detach()
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
        parts.append(tensor.contiguous().view(-1).view(torch.uint8).to("cpu"))
    data = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return Packed(len(text).to_bytes(8, "little") + text, data)


@dataclass(frozen=True)
class Snapshot:
    """Everything one checkpoint holds, copied at its step: the training thread may go on at once."""

    step: int
    weights: Packed  # model.safetensors
    optimizer: Packed  # optimizer.safetensors: optimizer state, RNG states and the loop's own tensors
    state: bytes  # state.json
    keep: tuple[str, ...] = ()  # checkpoint directory names pruning must not remove (the best one)


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, position: Position,
             config: dict, components: dict[str, dict[str, torch.Tensor]] | None = None, keep: tuple[str, ...] = ()) -> Snapshot:
    """Returns a copy of what a checkpoint at `position` stores (one host copy per file). Each training
    component's state (the loop's, precision's, the callbacks') is stored as `<component>.<key>`."""
    optim_tensors, optim_state = _split_optimizer(optimizer.state_dict())
    optim_tensors.update(_torch_rng())
    optim_tensors.update({f"{name}.{key}": tensor for name, state in (components or {}).items() for key, tensor in state.items()})
    state = {
        "step": position.step, "epoch": position.epoch, "batch": position.batch,
        "optimizer": optim_state,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "python_rng": _python_rng(), "numpy_rng": _numpy_rng(), "config": config,
    }
    weights = pack(saved_tensors(model), {"ties": json.dumps(tie_map(model))})
    return Snapshot(position.step, weights, pack(optim_tensors), json.dumps(state).encode(), keep)  # a bad value fails here, at its step


def save_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    position: Position, config: dict, keep_last: int,
                    components: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Writes a complete checkpoint atomically and returns its directory; keeps the newest `keep_last`."""
    return write_snapshot(directory, snapshot(model, optimizer, scheduler, position, config, components), keep_last)


def write_snapshot(directory: Path, snap: Snapshot, keep_last: int) -> Path:
    """Writes a snapshot as a complete checkpoint (durable before it gets its final name); keeps the newest `keep_last`.

    `directory` is `<run dir>/checkpoints`; a failed write raises RunDirWriteError naming the file.
    """
    with writing(directory.parent):
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / directory_name(snap.step)
        tmp = directory / f".tmp-{final.name}-{os.getpid()}"
        for stale in directory.glob(".tmp-*"):  # left by a killed run; the run lock makes us the only writer
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        try:
            _write(tmp, snap)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed write leaves the previous checkpoint the newest
            raise
        _fsync_dir(directory)
        for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
            if old.name not in snap.keep:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, snap: Snapshot) -> None:
    contents = {
        "model.safetensors": snap.weights.chunks(),
        "optimizer.safetensors": snap.optimizer.chunks(),
        "state.json": (snap.state,),
    }
    manifest, handles = {}, []
    try:
        for name, chunks in contents.items():
            digest = hashlib.sha256()
            handles.append(handle := open(tmp / name, "wb"))
            for chunk in chunks:  # hashed from the bytes written, never read back
                digest.update(chunk)
                handle.write(chunk)
            manifest[name] = digest.hexdigest()
        handles.append(handle := open(tmp / "manifest.json", "wb"))
        handle.write(json.dumps(manifest, indent=2).encode())
        # Every file is written before the first fsync: the filesystem then commits them together, and
        # the later fsyncs find little left to do (about 30% less time than write-then-fsync per file here).
        for handle in handles:
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        for handle in handles:
            handle.close()
    _fsync_dir(tmp)


def directory_name(step: int) -> str:
    """Returns the name of the checkpoint directory of a step: step_NNNNNNN."""
    return f"{PREFIX}{step:07d}"


def list_checkpoints(directory: Path) -> list[Path]:
    """Returns the complete checkpoint directories, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "manifest.json").is_file())


def latest_checkpoint(run_dir: Path) -> Path:
    """Returns the newest checkpoint of a run directory (or the path itself if it is a checkpoint)."""
    run_dir = Path(run_dir)
    if (run_dir / "manifest.json").is_file():
        return run_dir
    found = list_checkpoints(RunDir(run_dir).checkpoints)
    if not found:
        raise RunError(f"{run_dir}: no checkpoint found (expected {run_dir / 'checkpoints'}/{PREFIX}*/manifest.json)")
    return found[-1]


def verify(checkpoint: Path) -> None:
    """Raises RunError unless every file matches the SHA-256 its manifest records."""
    for name in FILES:
        read_verified(checkpoint, name)


def read_verified(checkpoint: Path, name: str) -> bytes:
    """Returns a checkpoint file's bytes, read once and checked against the manifest's SHA-256."""
    try:
        manifest = json.loads((checkpoint / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunError(f"{checkpoint}: unreadable manifest.json ({error})") from None
    path = checkpoint / name
    try:
        data = path.read_bytes()
    except OSError:
        raise RunError(f"{checkpoint}: {name} is missing or unreadable") from None
    if not isinstance(manifest, dict) or hashlib.sha256(data).hexdigest() != manifest.get(name):
        raise RunError(f"{path}: SHA-256 does not match the manifest; the file is damaged or was replaced")
    return data


def read_state(checkpoint: Path) -> dict[str, Any]:
    """Returns a checkpoint's verified state.json."""
    try:
        return json.loads(read_verified(checkpoint, "state.json"))
    except ValueError as error:
        raise RunError(f"{checkpoint / 'state.json'}: not valid JSON ({error})") from None


def load_weights(checkpoint: Path, model: nn.Module) -> None:
    """Copies a verified checkpoint's tensors into the model in place (identities, hence ties, survive)."""
    stored = _load_safetensors(checkpoint / "model.safetensors", read_verified(checkpoint, "model.safetensors"))
    wanted = saved_tensors(model)
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    if missing or unexpected:
        raise RunError(f"{checkpoint}: checkpoint does not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        for name, tensor in wanted.items():
            if stored[name].shape != tensor.shape:
                raise RunError(f"{checkpoint}: {name} has shape {tuple(stored[name].shape)}, the model wants {tuple(tensor.shape)}")
            tensor.copy_(stored[name])


# Checkpoints written before the training components kept their state by name held it under these keys.
_EARLIER_KEYS = {"loop.monitor": "monitor.state", "loop.grad_scaler": "precision.grad_scaler"}
_EARLIER_PREFIXES = {"loop.ema.": "ema."}


def _components(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """optimizer.safetensors' component entries (everything but the optimizer's `state.*` and `rng.*`), by component."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.startswith(("state.", "rng.")):
            continue
        key = _EARLIER_KEYS.get(key, key)
        for old, new in _EARLIER_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        name, _, rest = key.partition(".")
        found.setdefault(name, {})[rest] = tensor
    return found


def load_ema(checkpoint: Path, model: nn.Module) -> None:
    """Copies a checkpoint's averaged weights (trainer.ema_decay) into the model's trainable tensors in place."""
    stored = _load_safetensors(checkpoint / "optimizer.safetensors", read_verified(checkpoint, "optimizer.safetensors"))
    averaged = _components(stored).get("ema", {})
    if not averaged:
        raise RunError(f"{checkpoint}: this run was trained without trainer.ema_decay; it holds no averaged weights")
    with torch.no_grad():
        for name, tensor in saved_tensors(model).items():
            if name in averaged:
                tensor.copy_(averaged[name])


def load_training_state(checkpoint: Path, optimizer: torch.optim.Optimizer,
                        scheduler: Any) -> tuple[Position, dict[str, dict[str, torch.Tensor]]]:
    """Restores optimizer, scheduler and every RNG from a verified checkpoint.

    Returns its position and the training components' saved state, by component name.
    """
    state = read_state(checkpoint)
    tensors = _load_safetensors(checkpoint / "optimizer.safetensors", read_verified(checkpoint, "optimizer.safetensors"))
    optimizer.load_state_dict(_join_optimizer(tensors, state["optimizer"]))
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    random.setstate(_as_tuple(state["python_rng"]))
    kind, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return Position(state["step"], state["epoch"], state["batch"]), _components(tensors)


def _load_safetensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError) as error:
        raise RunError(f"{path}: not a valid safetensors file ({error}); refusing to load it") from None


def _split_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state_dict["param_groups"], "state": {}}
    for index, values in state_dict["state"].items():
        plain["state"][str(index)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value  # copied by `pack`
                plain["state"][str(index)][key] = {"tensor": f"state.{index}.{key}"}
            else:
                plain["state"][str(index)][key] = {"value": value}
    return tensors, plain


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {
        int(index): {key: tensors[ref["tensor"]] if "tensor" in ref else ref["value"] for key, ref in values.items()}
        for index, values in plain["state"].items()
    }
    return {"state": state, "param_groups": plain["param_groups"]}


def _torch_rng() -> dict[str, torch.Tensor]:
    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.update({f"rng.cuda.{i:03d}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _as_tuple(saved: list) -> tuple:
    return (saved[0], tuple(saved[1]), saved[2])


def _numpy_rng() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def file_sha256(path: Path) -> str:
    """Returns the SHA-256 of a file, as manifest.json records it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
