"""Per-kernel GPU time of a BlockMask build, and the fixed kernels' tile sizes compared.

    python benchmarks/tune_build.py [--json results.json]

For each case: the device time of each kernel of the build (torch.profiler, mean over 20
builds) and the CUDA-graph replay time of the whole build, first with the default
``plans.TILES``, then with each alternative tile size of the finish kernel and of the column
kernel (one changed at a time: the two kernels do not interact). Every variant's tensors are
checked equal to the default's. Then the cold first call in a fresh process with an empty
Triton cache, split by compiler stage (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_build  # run as a script: benchmarks/ is on the path
import torch
from profile_kernels import profiled

import maskspec
from maskspec.cuda import dispatch, plans

SPECS = Path(__file__).resolve().parent.parent / "specs"
STAGES = ("ast_to_ttir", "make_ttir", "make_ttgir", "make_llir", "make_ptx", "make_cubin")


def cases(dev: torch.device) -> dict[str, tuple[str, int, int, int, dict[str, torch.Tensor]]]:
    """name → (spec, B, Q_LEN, KV_LEN, inputs): the build table's cases (bench_build.py),
    a TTT sequence by its last step."""
    out = {}
    for c in bench_build.cases("cuda"):
        name = c.name if len(c.kvs) == 1 else f"{c.name}, the last"
        out[name] = (c.spec, c.B, c.q, c.kvs[-1], c.inputs(dev))
    return out


def variants() -> dict[str, plans.Tiles]:
    """The default tiles, then one field group changed at a time."""
    base = plans.TILES
    out = {"default": base}
    for chunk in (256, 512, 1024, 2048):
        for warps in (4, 8):
            out[f"finish chunk={chunk} warps={warps}"] = dataclasses.replace(
                base, kv_chunk=chunk, finish_warps=warps)
    for strip in (4, 8, 16, 32):
        for q_chunk in (64, 128, 256):
            for warps in (4, 8):
                out[f"column strip={strip} q_chunk={q_chunk} warps={warps}"] = \
                    dataclasses.replace(base, strip=strip, q_chunk=q_chunk, column_warps=warps)
    return {k: v for i, (k, v) in enumerate(out.items()) if i == 0 or v != base}


def kernel_times(build: Callable[[], Any], n: int = 20) -> dict[str, float]:
    """Mean device µs per build of each kernel (by name) over n builds."""
    prof = profiled(build, n)
    out: dict[str, float] = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t and e.count >= n:
            out[e.key[:60]] = t / n
    return out


def replay_ms(build: Callable[[], Any], n: int = 200) -> float:
    """Median CUDA-graph replay time of the whole build."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        build()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        build()
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def builder(spec: str, b: int, q: int, kv: int, inputs: dict[str, torch.Tensor],
            dev: torch.device) -> Callable[[], Any]:
    """One build of the spec's eight tensors on the fused kernels, as a closure."""
    mask = maskspec.load(SPECS / f"{spec}.mask")
    ctx = mask._bind(b, 1, q, kv, dev, inputs)
    return lambda: dispatch.build(ctx)


def tune(dev: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, case in cases(dev).items():
        build = builder(*case, dev)
        ref, default = build(), plans.TILES
        rows = {}
        for label, tiles in variants().items():
            plans.TILES = tiles
            try:
                same = all(torch.equal(x, y) for x, y in zip(build(), ref, strict=True))
                rows[label] = {"replay_ms": replay_ms(build), "equal": same,
                               "kernels_us": kernel_times(build)}
            finally:
                plans.TILES = default
            print(name, label, json.dumps(rows[label]), flush=True)
        out[name] = rows
    return out


def first_call_child() -> None:
    """In a fresh process with an empty Triton cache: the first eagle3 build (Q=4K, KV=8K),
    its wall time and the compiler's stages summed over the kernels."""
    dev = torch.device("cuda")
    torch.zeros(1, device=dev)
    mask = maskspec.load(SPECS / "eagle3.mask")
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    mask.block_mask(1, 1, 4096, 8192, dev, check_inputs=False)
    torch.cuda.synchronize()
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    stages = {s: 0.0 for s in STAGES}
    hashing = 0.0
    for (_, _, fn), v in stats.items():
        if fn in stages:
            stages[fn] += v[3]
        if fn == "triton_key":
            hashing += v[3]
    t1 = time.perf_counter()
    mask.block_mask(1, 1, 4096, 12288, dev, check_inputs=False)
    torch.cuda.synchronize()
    print(json.dumps({"first_s": total, "stages_s": stages, "triton_key_s": hashing,
                      "next_kv_s": time.perf_counter() - t1}))


def first_call() -> list[dict[str, Any]]:
    """Three cold first calls, each in a fresh process with its own empty Triton cache."""
    out = []
    for _ in range(3):
        env = dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="triton-"))
        proc = subprocess.run([sys.executable, __file__, "--first-call-child"], env=env,
                              capture_output=True, text=True, check=False)
        lines = proc.stdout.strip().splitlines()
        out.append(json.loads(lines[-1]) if lines else {"error": proc.stderr[-500:]})
        print("first call:", out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--first-call-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--skip-tiles", action="store_true", help="only the first-call split")
    args = ap.parse_args()
    if args.first_call_child:
        return first_call_child()
    dev = torch.device("cuda")
    results: dict[str, Any] = {"torch": torch.__version__,
                               "device": torch.cuda.get_device_name(dev),
                               "date": time.strftime("%Y-%m-%d"), "first_call": first_call()}
    if not args.skip_tiles:
        results["tiles"] = tune(dev)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return None


if __name__ == "__main__":
    main()
