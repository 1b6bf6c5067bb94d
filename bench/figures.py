"""Figures 2-17: statistics, batch delivery, cold start, sweeps, checkpoints, FLOP/s, compile, graphs, checkpoint cost, EMA, autocast,
MLflow tracking, token windows, the DataLoader path, ResNet-18 training.

Each returns Rows of ratios measured in this process (or its subprocesses) on this machine.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import runner
from bench.common import Row, alternate, timed
from bench.training_loop import SIZES
from runner.data.loader import Batches
from runner.prepare.optim import make_optimizer, trainable
from runner.prepare.plan import validate
from runner.prepare.prepare import prepare
from runner.run import checkpoint
from runner.run.checkpoint import Position
from runner.spec.types import TrainerSpec
from runner.training.environment import torch_threads
from runner.training.evaluation import loss_function
from runner.training.gradstats import GradStats
from runner.training.run import run_training

REPO = Path(__file__).resolve().parent.parent
QUIET = ["trainer.progress=off", "trainer.tensorboard=false", "trainer.plots=false"]
EVERY = TrainerSpec().log_every  # the default log interval: the statistics' cost as a user meets it


def _prepared(overrides: list[str]):
    return prepare(validate(runner.compose([*QUIET, *overrides])))


def _steps_per_second(base, overrides_extra: dict, threads: int | None = None) -> float:
    """steps/s of one run of `base` with trainer settings changed, on the torch threads a user's run gets (Plan.threads) unless given."""
    prepared = copy.copy(base)
    prepared.model = copy.deepcopy(base.model)
    trainer = dataclasses.replace(base.spec.trainer, **overrides_extra)
    prepared.plan = dataclasses.replace(base.plan, spec=dataclasses.replace(base.spec, trainer=trainer))
    with torch_threads(prepared.plan.threads if threads is None else threads), tempfile.TemporaryDirectory() as tmp:
        return run_training(prepared, Path(tmp))["steps_per_second"]


def grad_stats_overhead(repeats: int, smoke: bool) -> list[Row]:
    """2. steps/s with per-tensor statistics every step (and at the default interval) over statistics off; activation stats; TensorBoard."""
    rows = []
    for size, overrides in SIZES.items():
        base = _prepared([*overrides, *(["trainer.max_steps=20"] if smoke else [])])
        # Same log interval on both sides: the ratio is the statistics' cost alone.
        every, off_a = alternate(lambda: _steps_per_second(base, {"grad_stats": True, "log_every": 1}),
                                 lambda: _steps_per_second(base, {"grad_stats": False, "log_every": 1}), repeats)
        default, off_b = alternate(lambda: _steps_per_second(base, {"grad_stats": True, "log_every": EVERY}),
                                   lambda: _steps_per_second(base, {"grad_stats": False, "log_every": EVERY}), repeats)
        rows.append(Row("2. steps/s, grad stats every step / stats off", size, every / off_a, ">= 0.95"))
        rows.append(Row(f"2. steps/s, grad stats every {EVERY} steps / stats off", size, default / off_b, ">= 0.99"))
        quiet = {"grad_stats": False, "log_every": EVERY}
        acts, off_c = alternate(lambda: _steps_per_second(base, {**quiet, "activation_stats": True}),
                                lambda: _steps_per_second(base, {**quiet, "activation_stats": False}), repeats)
        rows.append(Row(f"2. steps/s, activation stats every {EVERY} steps / off", size, acts / off_c, ">= 0.97"))
        # Everything at its default, with and without the writer thread's TensorBoard work: what it costs the step (GIL included).
        defaults = {"grad_stats": True, "activation_stats": True, "log_every": EVERY, "hist_every": 100}
        board, off_d = alternate(lambda: _steps_per_second(base, {**defaults, "tensorboard": True}),
                                 lambda: _steps_per_second(base, {**defaults, "tensorboard": False}), repeats)
        rows.append(Row("2. steps/s, TensorBoard (scalars + histograms) on / off", size, board / off_d, "(report)", "written on the writer thread"))
    return rows


def grad_stats_vs_naive(repeats: int, smoke: bool) -> list[Row]:
    """3. the runner's statistics (foreach, one sync) over a per-parameter .norm().item() loop."""
    rows = []
    for size, overrides in SIZES.items():
        base = _prepared(overrides)
        model, data = base.model, base.data.to(base.device, base.dtype)
        torch.nn.functional.cross_entropy(model(data.train_x[:256]), data.train_y[:256]).backward()
        entries = trainable(model)
        stats = GradStats(entries)

        def ours() -> float:
            return timed(lambda: (stats.before_step(), stats.record(stats.after_step().tolist())))

        def naive() -> float:
            def run() -> dict:
                params = [e.tensor for e in entries]
                before = [p.detach().clone() for p in params]
                out = {}
                for e, p, b in zip(entries, params, before):
                    out[f"grad_norm/{e.name}"] = p.grad.norm().item()
                    out[f"grad_max/{e.name}"] = p.grad.abs().max().item()
                    out[f"weight_norm/{e.name}"] = p.detach().norm().item()
                    out[f"update_ratio/{e.name}"] = ((p.detach() - b).norm() / b.norm()).item()
                return out

            return timed(run)

        n = 5 if smoke else 50
        mine, theirs = alternate(lambda: sum(ours() for _ in range(n)), lambda: sum(naive() for _ in range(n)), repeats)
        rows.append(Row("3. grad stats time / naive .norm().item() loop", size, mine / theirs, "<= 0.3", "lower is better"))
    return rows


def batch_delivery(repeats: int, smoke: bool) -> list[Row]:
    """4. the runner's batches over randperm + index_select slicing, and over DataLoader(TensorDataset)."""
    rows = []
    for size, overrides in SIZES.items():
        base = _prepared(overrides)
        data = base.data.to(base.device, base.dtype)  # batches are served from the target device
        x, y, bs = data.train_x, data.train_y, base.spec.trainer.batch_size
        batches = Batches(x, y, bs, 0)
        epochs = 2 if smoke else 20

        def ours() -> float:
            return timed(lambda: [xb.shape for e in range(epochs) for xb, _ in batches.epoch(e)])

        def slicing() -> float:
            def run() -> None:
                for e in range(epochs):
                    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(e)).to(x.device)
                    for start in range(0, len(x), bs):
                        index = order[start : start + bs]
                        x.index_select(0, index), y.index_select(0, index)

            return timed(run)

        loader = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True)

        def dataloader() -> float:
            return timed(lambda: [xb.shape for _ in range(epochs) for xb, _ in loader])

        mine, slices = alternate(ours, slicing, repeats)
        _, loaded = alternate(ours, dataloader, max(1, repeats // 2))
        rows.append(Row("4. batches/s: runner / randperm+index_select", size, slices / mine, ">= 0.95", f"DataLoader(TensorDataset): {slices / loaded:.3f} of slicing"))
    return rows


def cold_start(repeats: int, smoke: bool) -> list[Row]:
    """5. `python -m runner trainer.max_steps=0` wall time over plain scripts that import torch and build the model."""
    with tempfile.TemporaryDirectory() as tmp:
        ours = [sys.executable, "-m", "runner", "trainer.max_steps=0", *QUIET, f"hydra.run.dir={tmp}/run"]
        model = "import torch; from torch import nn; m = nn.Sequential(nn.Linear(64,128), nn.ReLU(), nn.Linear(128,64), nn.ReLU(), nn.Linear(64,10))"
        plain = [sys.executable, "-c", model]
        with_optimizer = [sys.executable, "-c", model + "; torch.optim.Adam(m.parameters())"]
        run = lambda cmd: timed(lambda: subprocess.run(cmd, cwd=REPO, check=True, capture_output=True))
        n = 1 if smoke else max(3, repeats)
        mine, bare = alternate(lambda: run(ours), lambda: run(plain), n)
        _, optimized = alternate(lambda: run(ours), lambda: run(with_optimizer), n)
    return [
        Row("5. cold start: python -m runner max_steps=0 / import torch + build model", "digits MLP", mine / bare, "<= 1.3", f"{mine:.2f} s vs {bare:.2f} s"),
        Row("5. cold start / import torch + build model + Adam", "digits MLP", mine / optimized, "<= 1.3", f"{mine:.2f} s vs {optimized:.2f} s"),
    ]


def sweep(repeats: int, smoke: bool) -> list[Row]:
    """6. a sweep of N tiny jobs: wall over N x one job's own time; joblib 2 x 1 thread vs sequential."""
    jobs = 2 if smoke else 4
    steps = 20 if smoke else 3000  # long enough that joblib's worker start-up (an import of torch each) can pay off
    seeds = ",".join(map(str, range(jobs)))
    with tempfile.TemporaryDirectory() as tmp:
        def launch(extra: list[str], name: str) -> tuple[float, float]:
            directory = Path(tmp) / name
            command = [sys.executable, "-m", "runner", "-m", f"seed={seeds}", f"trainer.max_steps={steps}", "trainer.threads=1", *QUIET, f"hydra.sweep.dir={directory}", *extra]
            wall = timed(lambda: subprocess.run(command, cwd=REPO, check=True, capture_output=True))
            inside = sum(json.loads((directory / str(i) / "summary.json").read_text())["wall_seconds"] for i in range(jobs))
            return wall, inside

        sequential, inside = launch([], "seq")
        parallel, _ = launch(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "joblib")
    overhead = (sequential - inside) / jobs
    return [
        Row(f"6. sweep wall / sum of {jobs} jobs' own time", f"{jobs} jobs x {steps} steps", sequential / inside, "<= 1 + 0.1 s/job",
            f"{overhead:.2f} s per job beyond its own time (one process start shared by all)"),
        Row("6. joblib 2 workers x 1 thread: speed-up over sequential", f"{jobs} jobs x {steps} steps", sequential / parallel, ">= 1.6"),
    ]


def checkpoints(repeats: int, smoke: bool) -> list[Row]:
    """7. checkpoint save and load over torch.save/torch.load and safetensors save_file/load_file."""
    from safetensors.torch import load_file, save_file

    rows = []
    for size, overrides in list(SIZES.items()) + [("tied transformer_lm", ["experiment=transformer_lm"])]:
        base = _prepared(overrides)
        model = base.model
        optimizer = make_optimizer(model, base.spec.optim, base.plan.groups)
        data = base.data.to(base.device, base.dtype)
        loss_function(base.spec.data.task, "auto")(model(data.train_x[:8]), data.train_y[:8]).backward()
        optimizer.step()  # Adam's state (two moments per tensor) is part of what a checkpoint carries
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        unique = checkpoint.saved_tensors(model)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)

            def ours() -> float:
                saved = timed(lambda: checkpoint.save_checkpoint(tmp / "ours" / "checkpoints", model, optimizer, None, Position(1, 0, 0), base.spec.config, 1))
                latest = checkpoint.latest_checkpoint(tmp / "ours")
                loaded = timed(lambda: (checkpoint.load_weights(latest, model), checkpoint.read_state(latest)))
                return saved + loaded

            def torch_pickle() -> float:
                saved = timed(lambda: torch.save(state, tmp / "state.pt"))
                return saved + timed(lambda: torch.load(tmp / "state.pt", weights_only=True))

            def safetensors_plain() -> float:
                flat = {k: v.contiguous() for k, v in unique.items()}
                saved = timed(lambda: save_file(flat, tmp / "plain.safetensors"))
                return saved + timed(lambda: load_file(tmp / "plain.safetensors"))

            mine, pickled = alternate(ours, torch_pickle, repeats)
            _, plain = alternate(ours, safetensors_plain, repeats)
            real_fsync = checkpoint.os.fsync
            checkpoint.os.fsync = lambda fd: None  # what the same format costs without durability
            try:
                undurable, _ = alternate(ours, safetensors_plain, repeats)
            finally:
                checkpoint.os.fsync = real_fsync
            ours_size = (checkpoint.latest_checkpoint(tmp / "ours") / "model.safetensors").stat().st_size
            torch.save(model.state_dict(), tmp / "weights.pt")
            note = f"weights file {ours_size / 1e6:.2f} MB vs torch.save {(tmp / 'weights.pt').stat().st_size / 1e6:.2f} MB; ours fsyncs and hashes, they do not"
        rows.append(Row("7. checkpoint save+load / faster of torch.save and safetensors", size, mine / min(pickled, plain), "<= 1.2", note))
        rows.append(Row("7. same, fsync left out (format, hashing, verification only)", size, undurable / min(pickled, plain), "(report)"))
    return rows


def flops(repeats: int, smoke: bool) -> list[Row]:
    """8. achieved training FLOP/s over a bare loop of the same matrix multiplies, and over a large torch.mm."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    peak_n = 512 if smoke else (8192 if torch.cuda.is_available() else 2048)
    for size, overrides in SIZES.items():
        base = _prepared(overrides)
        model, bs, device = base.model, base.spec.trainer.batch_size, base.device
        # The device's own large matmul stands in for its peak (MFU = achieved / this).
        a, b = torch.randn(peak_n, peak_n, device=device), torch.randn(peak_n, peak_n, device=device)
        peak = 2 * peak_n**3 / statistics.median(timed(lambda: torch.mm(a, b)) for _ in range(5))
        x, y = base.data.train_x[:bs].to(device), base.data.train_y[:bs].to(device)
        with FlopCounterMode(display=False) as counter:
            torch.nn.functional.cross_entropy(model(x), y).backward()
        per_step = counter.get_total_flops()
        shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
        mats = [(torch.randn(bs, i, device=device), torch.randn(o, i, device=device), torch.randn(bs, o, device=device)) for i, o in shapes]

        def bare() -> float:
            def step() -> None:
                for inp, w, grad_out in mats:  # forward, grad of input, grad of weight
                    inp @ w.t(), grad_out @ w, grad_out.t() @ inp

            n = 20 if smoke else 200
            return n * sum(6 * bs * i * o for i, o in shapes) / timed(lambda: [step() for _ in range(n)])

        def ours() -> float:
            return per_step * _steps_per_second(base, {"max_steps": 20 if smoke else None, "log_every": EVERY})

        achieved, matmuls = alternate(ours, bare, repeats)
        rows.append(Row("8. training FLOP/s / bare loop of the same matmuls", size, achieved / matmuls, ">= 0.85",
                        f"{achieved / 1e9:.1f} GFLOP/s on {device}; MFU {achieved / peak:.2f} of a {peak_n}^2 torch.mm ({peak / 1e9:.0f} GFLOP/s)"))
    return rows


def compile_speedup(repeats: int, smoke: bool) -> list[Row]:
    """9. steps/s with trainer.compile=true over eager (compile time excluded from steps/s, shown apart)."""
    rows = []
    for size, overrides in SIZES.items():
        base = _prepared([*overrides, *(["trainer.max_steps=20"] if smoke else [])])
        started = time.perf_counter()
        compiled = _steps_per_second(base, {"compile": True})
        first = time.perf_counter() - started
        eager, compiled = alternate(lambda: _steps_per_second(base, {"compile": False}), lambda: _steps_per_second(base, {"compile": True}), max(1, repeats // 2))
        rows.append(Row("9. steps/s, torch.compile / eager", size, compiled / eager, "(report)", f"first compiled run {first:.1f} s incl. compilation"))
    return rows


def graph_execution(repeats: int, smoke: bool) -> list[Row]:
    """10. steps/s of the mlp run as a graph (layers looked up by name) / the same mlp as a chain (nn.Sequential)."""
    rows = []
    for size, overrides in SIZES.items():
        extra = ["trainer.max_steps=20"] if smoke else []
        chain = _prepared([*overrides, *extra])
        # `model.output: head` makes the same layers a Graph: the name-wired path, same weights.
        graph = _prepared([*overrides, *extra, "model.output=head"])
        assert type(graph.model).__name__ == "Graph" and isinstance(chain.model, torch.nn.Sequential)
        wired, chained = alternate(lambda: _steps_per_second(graph, {}), lambda: _steps_per_second(chain, {}), repeats)
        rows.append(Row("10. steps/s, mlp as a graph / as a chain", size, wired / chained, ">= 0.98",
                        "the default mlp itself runs as a chain (nn.Sequential)"))
    return rows


def _setting_cost(figure: str, on: dict, off: dict, note: str, repeats: int, smoke: bool, steps: dict[str, list[str]] | None = None,
                  goal: str = ">= 0.95") -> list[Row]:
    """steps/s with the trainer settings `on` over `off`, alternated, for each size (`steps`: its length)."""
    rows = []
    for size, overrides in SIZES.items():
        length = ["trainer.max_steps=40"] if smoke else (steps or {}).get(size, [])
        kept = [o for o in overrides if not (length and o.startswith("trainer.epochs="))]
        base = _prepared([*kept, *length])
        with_it, without = alternate(lambda: _steps_per_second(base, on), lambda: _steps_per_second(base, off), repeats)
        rows.append(Row(figure, size, with_it / without, goal, note))
    return rows


def checkpoint_overhead(repeats: int, smoke: bool) -> list[Row]:
    """11. steps/s with a checkpoint every 20 steps, and at every epoch's end (the default), over checkpoints at the end only."""
    long_enough = {size: ["trainer.epochs=10" if "digits" in size else "trainer.epochs=6"] for size in SIZES}
    none = {"ckpt_every": 0, "ckpt_every_epochs": 0}
    return [*_setting_cost("11. steps/s, a checkpoint every 20 steps / none", {**none, "ckpt_every": 20}, none,
                           "written, hashed and fsynced on a background thread", repeats, smoke, long_enough),
            *_setting_cost("11. steps/s, a checkpoint every epoch (the default) / none", {**none, "ckpt_every_epochs": 1}, none,
                           "one checkpoint an epoch, after its evaluation", repeats, smoke, long_enough),
            _io_interference(repeats, smoke)]


def _io_interference(repeats: int, smoke: bool) -> Row:
    """Figure 11's reference: a plain PyTorch loop (no I/O of its own) beside another process that writes checkpoint-like
    directories as often as the digits run's epochs end, over the same loop alone."""
    from bench.training_loop import hand_written

    base = _prepared(["trainer.epochs=10", *(["trainer.max_steps=40"] if smoke else [])])
    spec = base.spec

    def plain() -> float:  # on the threads the digits run gets (Plan.threads: 1), as figure 11's rows
        model = copy.deepcopy(base.model)
        with torch_threads(base.plan.threads):
            seconds, steps = hand_written(model, base.data.to(base.device, base.dtype), spec.trainer.epochs, spec.trainer.batch_size, dict(spec.optim.args)["lr"], spec.seed,
                                          spec.trainer.max_steps)
        return steps / seconds

    def beside_writes() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            writer = subprocess.Popen([sys.executable, "-m", "bench.io_load", str(Path(tmp) / "checkpoints")], cwd=REPO)
            try:
                time.sleep(0.5)  # started and writing
                return plain()
            finally:
                writer.kill()
                writer.wait()

    loaded, alone = alternate(beside_writes, plain, repeats)
    return Row("11. reference: plain loop beside a process writing a checkpoint every 15 ms / alone", "digits MLP (17k params, batch 64)",
               loaded / alone, "(report)", "the machine's file-system cost to a process that does no I/O (python -m bench.io_load)")


def ema_overhead(repeats: int, smoke: bool) -> list[Row]:
    """12. steps/s with an exponential moving average of the weights (trainer.ema_decay) over without."""
    return _setting_cost("12. steps/s, EMA of the weights / none", {"ema_decay": 0.999}, {"ema_decay": None},
                         "one foreach lerp per step", repeats, smoke)


def autocast_speedup(repeats: int, smoke: bool) -> list[Row]:
    """13. steps/s with trainer.autocast=bfloat16 over float32, on the device the bench runs on."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    goal = "> 1 (tensor cores)" if device == "cuda" else "reported"
    return _setting_cost(f"13. steps/s, bfloat16 autocast / float32 ({device})", {"autocast": "bfloat16"}, {"autocast": None},
                         "weights stay float32", repeats, smoke, goal=goal)


def tracking_overhead(repeats: int, smoke: bool) -> list[Row]:
    """14. steps/s with +tracker=mlflow (a SQLite store) over without: the writer thread hands MLflow the records."""
    from runner.config.schema import TrackerConfig
    from runner.run import tracking
    from runner.spec.types import TrackerSpec

    rows = []
    with tempfile.TemporaryDirectory() as store:
        spec = TrackerSpec(**dataclasses.asdict(TrackerConfig(uri=f"sqlite:///{store}/bench.db", experiment="bench")))

        def run(base, tracked: bool) -> float:
            prepared = copy.copy(base)
            prepared.model = copy.deepcopy(base.model)
            with tempfile.TemporaryDirectory() as tmp:
                tracker = tracking.start(spec, base.spec.config, Path(tmp), False) if tracked else None
                result = run_training(prepared, Path(tmp), tracker=tracker)["steps_per_second"]
                if tracker is not None:
                    tracker.finish()
                return result

        # The logging process runs at idle priority: what it costs is the CPU training leaves it. The last
        # row leaves it a core (1 torch thread) over a run long enough to hide its start-up.
        settings = [(size, overrides, "all cores to torch") for size, overrides in SIZES.items()]
        digits = next(iter(SIZES))
        settings.append((digits, [*SIZES[digits], "trainer.threads=1", "trainer.epochs=60"], "1 torch thread, 60 epochs"))
        for size, overrides, note in settings:
            base = _prepared([*overrides, *(["trainer.max_steps=40"] if smoke else [])])
            with_it, without = alternate(lambda: run(base, True), lambda: run(base, False), repeats)
            rows.append(Row("14. steps/s, MLflow tracking (SQLite) / none", size, with_it / without, ">= 0.97", note))
    return rows


def token_windows(repeats: int, smoke: bool) -> list[Row]:
    """15. batches/s of data=tokens' window sampler over nanoGPT's get_batch, on a memory-mapped uint16 file."""
    import numpy as np

    from runner.data.tokens import TokenWindows, read_ids

    block, batch, count = 256, 64, 5 if smoke else 200
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.bin"
        np.random.default_rng(0).integers(0, 50257, 2_000_000 if not smoke else 20_000).astype(np.uint16).tofile(path)
        windows = TokenWindows(read_ids(path, "uint16", 50257), block, batch, seed=0, device=torch.device("cpu"))

        def ours() -> float:
            batches = windows.epoch(0)
            return timed(lambda: [next(batches) for _ in range(min(count, windows.steps_per_epoch))])

        def get_batch() -> float:  # nanoGPT's train.py, CPU branch: a new memmap per batch, one window per row
            def run() -> None:
                for _ in range(min(count, windows.steps_per_epoch)):
                    data = np.memmap(path, dtype=np.uint16, mode="r")
                    ix = torch.randint(len(data) - block, (batch,))
                    torch.stack([torch.from_numpy(data[i : i + block].astype(np.int64)) for i in ix])
                    torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block].astype(np.int64)) for i in ix])

            return timed(run)

        mine, theirs = alternate(ours, get_batch, repeats)
    return [Row("15. token batches/s: runner / nanoGPT's get_batch", f"block {block}, batch {batch}", theirs / mine, ">= 0.95",
                "uint16 memmap, 2M tokens")]


def _cifar_files(root: Path, count: int) -> Path:
    """CIFAR-10's binary layout (per image a label byte, then the 3072 pixel bytes), `count` random images per file."""
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = np.concatenate([rng.integers(0, 10, (count, 1)), rng.integers(0, 256, (count, 3072))], axis=1)
        records.astype(np.uint8).tofile(root / name)
    return root


def loader_batches(repeats: int, smoke: bool) -> list[Row]:
    """16. batches/s of data.loader's DataLoader path over a plain DataLoader with the same workers and transforms."""
    from runner.data.loader import LoaderBatches
    from runner.data.sources import load_data

    workers, batch = 2, 128
    with tempfile.TemporaryDirectory() as tmp:
        root = _cifar_files(Path(tmp) / "cifar10", 80 if smoke else 2000)  # 5 training files
        cfg = runner.compose(["experiment=resnet18_cifar10", f"data.root={root}"])
        data = load_data(cfg.data)
        ours = LoaderBatches(data.train_x, data.train_y, batch, 0, data.transform, torch.device("cpu"), num_workers=workers)
        plain_seed = iter(range(10**9))

        def collate(samples):  # the default collation, then the same transform code on the batch
            x, y = torch.utils.data.default_collate(samples)
            return data.transform(x, torch.Generator().manual_seed(next(plain_seed))), y

        plain = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=batch, shuffle=True, num_workers=workers,
                           collate_fn=collate, generator=torch.Generator().manual_seed(0))
        epoch = iter(range(10**9))
        mine = lambda: ours.steps_per_epoch / timed(lambda: list(ours.epoch(next(epoch))))  # noqa: E731
        theirs = lambda: len(plain) / timed(lambda: list(plain))  # noqa: E731
        a, b = alternate(mine, theirs, repeats)
    return [Row("16. batches/s: data.loader (2 workers) / plain DataLoader, same workers and transforms", f"CIFAR-shaped, batch {batch}",
                a / b, ">= 0.95", "random crop (pad 4), flip, normalize on each batch in the workers; an epoch a round, workers started per epoch on both sides")]


def resnet18_images(repeats: int, smoke: bool) -> list[Row]:
    """17. images/s of ResNet-18 training (experiment=resnet18_cifar10, its default observability) over a hand-written loop."""
    from runner.data.transforms import batch_generator

    steps, batch = (2, 8) if smoke else (20, 128)  # the preset's batch
    with tempfile.TemporaryDirectory() as tmp:
        root = _cifar_files(Path(tmp) / "cifar10", 40 if smoke else 1000)  # 5,000 training images: 20 steps stay in epoch 0
        overrides = ["experiment=resnet18_cifar10", f"data.root={root}", f"trainer.batch_size={batch}", f"trainer.max_steps={steps}",
                     "trainer.progress=off"]
        base = prepare(validate(runner.compose(overrides)))
        workers = prepare(validate(runner.compose([*overrides, "data.loader.num_workers=2", "data.loader.persistent_workers=true"])))
        initial, spec, equal = copy.deepcopy(base.model), base.spec, []

        def run_runner(setup=base) -> float:
            prepared = copy.copy(setup)
            prepared.model = copy.deepcopy(initial)
            with tempfile.TemporaryDirectory() as out:
                rate = run_training(prepared, Path(out))["steps_per_second"] * batch
            run_runner.model = prepared.model
            return rate

        def run_plain() -> float:  # SGD, momentum, weight decay, norm clipping, linear warm-up then cosine: optim=sgd_cosine by hand
            model, data = copy.deepcopy(initial), base.data
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.0005)
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=50)
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps - 50, 1))
            scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[50])
            model.train()
            done, began = 0, time.perf_counter()
            order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(spec.seed * 100_003))
            for index in range(steps):
                rows = order[index * batch : (index + 1) * batch]
                x = data.transform(data.train_x[rows], batch_generator(spec.seed, 0, index))
                loss = torch.nn.functional.cross_entropy(model(x), data.train_y[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0, foreach=True)
                optimizer.step()
                scheduler.step()
                done += 1
            rate = done * batch / (time.perf_counter() - began)
            equal.append(all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), run_runner.model.state_dict().values())))
            return rate

        ours, plain = alternate(run_runner, run_plain, repeats)
        # What data.loader.num_workers: auto weighs on a CPU: the same run with 2 loader workers, against the default (in memory).
        served, alone = alternate(lambda: run_runner(workers), run_runner, repeats)
    return [Row("17. images/s, ResNet-18 training: runner (defaults) / hand-written loop", f"CIFAR-shaped, batch {batch}, {steps} steps",
                ours / plain, ">= 0.95", "final weights bitwise equal" if all(equal) else "WEIGHTS DIFFER"),
            Row("17. images/s, ResNet-18 training: 2 persistent loader workers / the default (auto: in memory on a CPU)",
                f"CIFAR-shaped, batch {batch}, {steps} steps", served / alone, "(report)",
                f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores: the measurement behind auto's CPU rule")]


ALL = [grad_stats_overhead, grad_stats_vs_naive, batch_delivery, cold_start, sweep, checkpoints, flops, compile_speedup, graph_execution,
       checkpoint_overhead, ema_overhead, autocast_speedup, tracking_overhead, token_windows, loader_batches, resnet18_images]
