"""Where a CUDA build of an element-fallback spec spends its time: the kernels of one build
by CUDA time (torch.profiler), against the classification by parts, and the decide kernel
over every block at other tile shapes and warp counts (needs a GPU):
``python benchmarks/profile_fallback.py tree natten_morton``."""

from __future__ import annotations

import argparse
import random

import torch
from profile_kernels import event_ms  # run as a script: benchmarks/ is on the path
from torch.profiler import ProfilerActivity, profile

import maskspec
from maskspec import lower
from maskspec.cuda import decide, dispatch
from maskspec.verify import random_inputs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="+")
    ap.add_argument("--q", type=int, default=16384)
    args = ap.parse_args()
    dispatch.BACKGROUND_JIT = False
    dev, q = torch.device("cuda"), args.q
    for name in args.names:
        m = maskspec.load(name)
        x = {k: v.to(dev) for k, v in random_inputs(m, 1, 1, q, q, random.Random(0)).items()}

        def build(m=m, x=x):
            return m.block_mask(1, 1, q, q, dev, 128, check_inputs=False, **x)
        ctx = m._bind(1, 1, q, q, dev, x, check=False)
        print(f"== {name}: build {event_ms(build, 20):.3f} ms, by parts "
              f"{event_ms(lambda ctx=ctx: dispatch.torch_path(ctx), 20):.3f} ms", flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            build()
            torch.cuda.synchronize()
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=8), flush=True)
        lead = lower.lead_shape(m.ir, ctx.sizes)
        kept = decide.TILE, decide.WARPS
        for tile in (512, 1024, 2048):
            for warps in (2, 4, 8):
                decide.TILE, decide.WARPS = tile, warps
                ms = event_ms(lambda ctx=ctx, lead=lead: decide.classes(
                    ctx.mask, ctx.sizes, ctx.inputs, lead, (128, 128), dev), 20)
                print(f"   every block decided: tile {tile} warps {warps}: {ms:.3f} ms",
                      flush=True)
        decide.TILE, decide.WARPS = kept


if __name__ == "__main__":
    main()
