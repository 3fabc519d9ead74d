"""Where the plain call's host time goes: cProfile over many ``CompiledMask.block_mask``
builds on CUDA (kernels compiled beforehand), functions by their own time.

    python benchmarks/profile_host.py [--spec document_bidirectional] [--q-len 131072]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random

import torch

import maskspec
from maskspec import fused
from maskspec.verify import random_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="document_bidirectional")
    ap.add_argument("--q-len", type=int, default=131072)
    ap.add_argument("--builds", type=int, default=300)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    dev, q = torch.device("cuda"), args.q_len
    mask = maskspec.load(args.spec)
    inputs = {k: v.to(dev) for k, v in random_inputs(mask, 1, 1, q, q, random.Random(0)).items()}
    fused.compiled(mask.ir, *mask._bind(1, 1, q, q, dev, inputs)[:2], dev, (128, 128), wait=True)

    def build() -> None:
        mask.block_mask(1, 1, q, q, dev, 128, check_inputs=False, **inputs)
    for _ in range(20):
        build()
    torch.cuda.synchronize()
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
