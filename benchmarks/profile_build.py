"""Where a BlockMask build spends its GPU time: kernels by CUDA time (torch.profiler).

    python benchmarks/profile_build.py [--spec eagle3] [--q-len 49152] [--rounds 5]

Profiles the build (``CompiledMask.block_mask(..., check_inputs=False)``: the generated
kernel) and the one with a torch.compile'd row stage (``fast.Builder(compiled=True)``) after
a warm-up, printing the kernels that take the most device time, then the graph-replay time
of both.
"""

from __future__ import annotations

import argparse

import torch
from profile_kernels import event_ms, profiled  # run as a script: benchmarks/ is on the path

import maskspec
from maskspec.fast import Builder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="eagle3")
    ap.add_argument("--q-len", type=int, default=49152)
    ap.add_argument("--rounds", type=int, default=5, help="KV_LEN = rounds · Q_LEN")
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args()
    mask, dev = maskspec.load(args.spec), torch.device("cuda")
    q, kv = args.q_len, args.q_len * args.rounds

    compiled_builder = Builder(mask, 128, compiled=True)
    builds = {
        "generated kernel (CompiledMask.block_mask)":
            lambda: mask.block_mask(1, 1, q, kv, dev, 128, check_inputs=False),
        "compiled row stage (fast.Builder(compiled=True))":
            lambda: compiled_builder(1, 1, q, kv, dev),
    }
    for label, build in builds.items():
        prof = profiled(build)
        print(f"{label}, 5 builds:")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows))
    for compiled in (False, True):
        graph = Builder(mask, 128, cuda_graph=True, compiled=compiled)
        ms = event_ms(lambda g=graph: g(1, 1, q, kv, dev), 20)
        label = "compiled row stage" if compiled else "generated kernel"
        print(f"graph replay, {label}: {ms:.3f} ms per build")


if __name__ == "__main__":
    main()
