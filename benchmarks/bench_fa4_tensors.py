"""Build time of FA4's block-sparse tensors (``mask.fa4_block_sparse``) on CUDA, beside the
flex BlockMask of the same build (``mask.block_mask``): medians of 50 CUDA-event timings
(``bench_fa4.bench_ms``), the kernels compiled beforehand, values unchecked; and FA4's
again with the plain call's CUDA graphs off.

    python benchmarks/bench_fa4_tensors.py [--q-len 8192]
"""

from __future__ import annotations

import argparse

import torch
from bench_fa4 import bench_ms  # run as a script: benchmarks/ is on the path

import maskspec
from maskspec.cuda import dispatch, graphs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--q-len", type=int, default=8192)
    args = ap.parse_args()
    dispatch.BACKGROUND_JIT = False
    dev, q = torch.device("cuda"), args.q_len
    docs = {"doc": (torch.arange(q, device=dev) // 1000).view(1, -1)}
    for name, kv, inputs in (("causal", q, {}), ("eagle3", 5 * q, {}),
                             ("document_causal", q, docs)):
        mask = maskspec.load(name)
        fa4 = bench_ms(lambda m=mask, kv=kv, i=inputs: m.fa4_block_sparse(
            1, 8, q, kv, dev, (128, 128), arch=90, check_inputs=False, **i), reps=50)
        flex = bench_ms(lambda m=mask, kv=kv, i=inputs: m.block_mask(
            1, 8, q, kv, dev, 128, check_inputs=False, **i), reps=50)
        with graphs.off():  # the same without the plain call's graphs
            fa4_eager = bench_ms(lambda m=mask, kv=kv, i=inputs: m.fa4_block_sparse(
                1, 8, q, kv, dev, (128, 128), arch=90, check_inputs=False, **i), reps=50)
        print(f"{name} Q={q} KV={kv} B=1 H=8: fa4_block_sparse {fa4:.3f} ms "
              f"(without graphs {fa4_eager:.3f} ms), block_mask {flex:.3f} ms", flush=True)
    print({"torch": torch.__version__, "device": torch.cuda.get_device_name(dev)})


if __name__ == "__main__":
    main()
