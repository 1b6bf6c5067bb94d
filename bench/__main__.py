"""python -m bench [--smoke] [--repeats N]: every figure as a ratio against plain PyTorch, one table."""

from __future__ import annotations

import argparse

import torch

from bench import figures, streaming, threads, training_loop
from bench.common import machine, print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds per figure (after one warm-up)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the bench runs, measures nothing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", default="", help="comma-separated figure numbers, e.g. 1,2,7 (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.smoke else args.repeats
    print(f"machine: {machine()}")
    wanted = {int(n) for n in args.only.split(",") if n}
    rows = training_loop.rows(repeats, smoke=args.smoke) if not wanted or 1 in wanted else []
    for number, figure in enumerate([*figures.ALL, threads.default_threads, streaming.streaming_library], start=2):
        if not wanted or number in wanted:
            print(f"figure {number}: {figure.__doc__.splitlines()[0]}", flush=True)
            rows += figure(repeats, args.smoke)
    print_table(rows)


if __name__ == "__main__":
    main()
