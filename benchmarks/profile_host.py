"""Where the plain call's host time goes: each stage of ``CompiledMask.block_mask`` timed
alone over many calls on CUDA (kernels compiled beforehand), then cProfile over whole
builds, functions by their own time.

    python benchmarks/profile_host.py [--spec eagle3] [--q-len 49152] [--kv-factor 5]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import random
import time
from collections.abc import Callable
from typing import Any

import torch

import maskspec
from maskspec import deferred
from maskspec import mask_mod as mask_mod_backend
from maskspec.cuda import dispatch, graphs, plans
from maskspec.targets import flex
from maskspec.verify import random_inputs


def _us(fn: Callable[[], Any], n: int = 2000) -> float:
    """Host microseconds per call (the device synchronized before and after)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / n * 1e6


def stages(mask: maskspec.CompiledMask, q: int, kv: int, inputs: dict[str, Any]) -> None:
    """Per-stage host time of one build."""
    dev, bs = torch.device("cuda"), (128, 128)
    ctx = mask._bind(1, 1, q, kv, dev, inputs, False, bs)
    tensors = dispatch.tensors(ctx)
    mm = mask_mod_backend.mask_mod(mask.ir, ctx.sizes, ctx.inputs)
    rows = {
        "whole call, unchecked (graph replay)": lambda: mask.block_mask(
            1, 1, q, kv, dev, check_inputs=False, **inputs),
        "whole call, checked (graph replay)": lambda: mask.block_mask(1, 1, q, kv, dev, **inputs),
        "bind unchecked (convert + sanitize)": lambda: mask._bind(1, 1, q, kv, dev, inputs,
                                                                  False),
        "bind checked": lambda: mask._bind(1, 1, q, kv, dev, inputs, True),
        "dispatch.tensors": lambda: dispatch.tensors(ctx),
        "dispatch.compiled (the ready check)": lambda: dispatch.compiled(ctx),
        "mask_mod": lambda: mask_mod_backend.mask_mod(mask.ir, ctx.sizes, ctx.inputs),
        "BlockMask(...)": lambda: flex.from_tensors(tensors, q, kv, bs, mm),
        "torch.zeros scratch": lambda: torch.zeros(2, 1, 1, -(-q // 128), -(-kv // 128),
                                                   dtype=torch.int32, device=dev),
        "torch.empty": lambda: torch.empty(16, dtype=torch.int32, device=dev),
    }
    rows.update(_replay_rows(mask, q, kv, inputs))
    for name, fn in rows.items():
        print(f"{name:40s} {_us(fn):8.1f} us", flush=True)


def _no_graphs(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with graphs.off():
            return fn()
    return run


def _replay_rows(mask: maskspec.CompiledMask, q: int, kv: int, inputs: dict[str, Any]
                 ) -> dict[str, Callable[[], Any]]:
    """The plain call's graph replay (``graphs.PLAIN``) split into its steps."""
    dev = torch.device("cuda")
    rows: dict[str, Callable[[], Any]] = {}
    for check in (False, True):
        call = functools.partial(mask.block_mask, 1, 1, q, kv, dev, check_inputs=check,
                                 **inputs)
        call(), call()  # the second call captures
        key = graphs.call_key(mask.ir, 1, 1, q, kv, plans.indexed(dev), (128, 128), check,
                              inputs)
        cap = graphs.PLAIN.graphs[key]
        what = "checked" if check else "unchecked"
        rows[f"call {what}, no graph"] = _no_graphs(call)
        rows[f"call {what}: key"] = functools.partial(
            graphs.call_key, mask.ir, 1, 1, q, kv, plans.indexed(dev), (128, 128), check, inputs)
        rows[f"call {what}: replay (copy in, watch)"] = functools.partial(
            graphs.replay, cap, inputs, inputs, check)
        rows[f"call {what}: copy out"] = functools.partial(graphs._copied, cap, inputs)
    rows["graph.replay() alone"] = cap.graph.replay
    rows["deferred.poll()"] = deferred.poll
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="eagle3")
    ap.add_argument("--q-len", type=int, default=49152)
    ap.add_argument("--kv-factor", type=int, default=5)
    ap.add_argument("--builds", type=int, default=300)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    dev, q = torch.device("cuda"), args.q_len
    kv = q * args.kv_factor
    mask = maskspec.load(args.spec)
    inputs = {k: v.to(dev) for k, v in random_inputs(mask, 1, 1, q, kv, random.Random(0)).items()}
    dispatch.compiled(mask._bind(1, 1, q, kv, dev, inputs), wait=True)
    stages(mask, q, kv, inputs)

    def build() -> None:
        mask.block_mask(1, 1, q, kv, dev, 128, **inputs)
    for _ in range(20):
        build()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as kp:
        for _ in range(20):
            build()
        torch.cuda.synchronize()
    print("device time of 20 builds, by kernel:")
    print(kp.key_averages().table(sort_by="cuda_time_total", row_limit=12))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.builds):
        build()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.rows)
    pstats.Stats(prof).sort_stats("cumtime").print_stats(args.rows)


if __name__ == "__main__":
    main()
