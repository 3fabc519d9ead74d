"""The plain call's graph replays on CUDA, call by call: host time per build (the device
synchronized before and after many builds) of a TTT sequence and of single shapes, checked
and unchecked, with and without the graphs, and how many graphs each left captured.

    python benchmarks/profile_replays.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

import maskspec
from maskspec.cuda import dispatch, graphs


def _ms(fn: Callable[[], object], n: int = 200) -> tuple[float, float, float]:
    """(host ms per call, wall ms per call with the device synchronized at the end, median
    CUDA-event ms of single calls each synchronized: bench_build's measure)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    events = []
    for _ in range(n // 4):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        events.append(a.elapsed_time(b))
    return host / n * 1e3, wall / n * 1e3, statistics.median(events)


def main() -> None:
    dispatch.BACKGROUND_JIT = False
    dev, mask = torch.device("cuda"), maskspec.load("eagle3")
    lens = torch.tensor([3000, 4096], device=dev)
    gen = torch.Generator().manual_seed(0)  # bench_build's B=8 lengths
    lens8 = torch.randint(16384 // 2, 16384 + 1, (8,), generator=gen).to(dev)
    cases = {
        "TTT Q=4K, 7 steps": lambda check: [mask.block_mask(1, 1, 4096, 4096 * s, dev,
                                                            check_inputs=check)
                                            for s in range(1, 8)],
        "Q=48K KV=5Q": lambda check: mask.block_mask(1, 1, 49152, 245760, dev,
                                                     check_inputs=check),
        "B=2 Q=16K KV=5Q seq_len": lambda check: mask.block_mask(
            2, 1, 16384, 81920, dev, check_inputs=check, seq_len=lens),
        "B=8 Q=16K KV=5Q seq_len": lambda check: mask.block_mask(
            8, 1, 16384, 81920, dev, check_inputs=check, seq_len=lens8),
    }
    for name, build in cases.items():
        for check in (False, True):
            for budget in (graphs.BUDGET, 0):
                old, graphs.BUDGET = graphs.BUDGET, budget
                graphs.PLAIN.clear()
                host, wall, event = _ms(lambda b=build, c=check: b(c))
                graphs.BUDGET = old
                print(f"{name:26s} check={check!s:5s} graphs={'on' if budget else 'off'}: "
                      f"host {host:.4f} ms, wall {wall:.4f} ms, event {event:.4f} ms, "
                      f"{len(graphs.PLAIN.graphs)} graphs", flush=True)


if __name__ == "__main__":
    main()
