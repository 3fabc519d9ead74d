"""The plain call's graph replays on CUDA, call by call: host time per build (the device
synchronized before and after many builds) and CUDA-event time of single builds, of a TTT
sequence and of single shapes, checked and unchecked, with and without the graphs, and how
many graphs each left captured.

    python benchmarks/profile_replays.py
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from bench_build import _time_ms  # run as a script: benchmarks/ is on the path
from profile_host import _us

import maskspec
from maskspec.cuda import dispatch, graphs


def _ms(fn: Callable[[], object]) -> tuple[float, float]:
    """(host ms per call over back-to-back calls, ``profile_host._us``; median CUDA-event ms
    of single calls, ``bench_build._time_ms``: the BENCHMARKS.md measure)."""
    return _us(fn, 200) / 1e3, _time_ms(fn, torch.device("cuda"))


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
            for on in (True, False):
                graphs.PLAIN.clear()
                with contextlib.nullcontext() if on else graphs.off():
                    host, event = _ms(lambda b=build, c=check: b(c))
                print(f"{name:26s} check={check!s:5s} graphs={'on' if on else 'off'}: "
                      f"host {host:.4f} ms, event {event:.4f} ms, "
                      f"{len(graphs.PLAIN.graphs)} graphs", flush=True)


if __name__ == "__main__":
    main()
