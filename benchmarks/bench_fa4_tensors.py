"""Build time of FA4's block-sparse tensors (``mask.fa4_block_sparse``) on CUDA, beside the
flex BlockMask of the same build (``mask.block_mask``): medians of CUDA-event timings, the
kernels compiled beforehand, values unchecked.

    python benchmarks/bench_fa4_tensors.py [--q-len 8192]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import torch

import maskspec
from maskspec import fused


def _median_ms(fn: Callable[[], Any], reps: int = 50) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--q-len", type=int, default=8192)
    args = ap.parse_args()
    fused.BACKGROUND_JIT = False
    dev, q = torch.device("cuda"), args.q_len
    docs = {"doc": (torch.arange(q, device=dev) // 1000).view(1, -1)}
    for name, kv, inputs in (("causal", q, {}), ("eagle3", 5 * q, {}),
                             ("document_causal", q, docs)):
        mask = maskspec.load(name)
        fa4 = _median_ms(lambda m=mask, kv=kv, i=inputs: m.fa4_block_sparse(
            1, 8, q, kv, dev, (128, 128), arch=90, check_inputs=False, **i))
        flex = _median_ms(lambda m=mask, kv=kv, i=inputs: m.block_mask(
            1, 8, q, kv, dev, 128, check_inputs=False, **i))
        print(f"{name} Q={q} KV={kv} B=1 H=8: fa4_block_sparse {fa4:.3f} ms, "
              f"block_mask {flex:.3f} ms", flush=True)
    print({"torch": torch.__version__, "device": torch.cuda.get_device_name(dev)})


if __name__ == "__main__":
    main()
