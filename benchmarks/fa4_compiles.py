"""How many FA4 kernels a spec compiles over many sequence lengths, each result checked.

maskspec's CuTe mask_mod reads Q_LEN and KV_LEN from FA4's ``seqlen_info``, so the generated
source (FA4's compile key for the mask_mod) is one per spec. This drives FA4 forward and
backward with ``mask.fa4(...)`` over Q_LEN ∈ {1000, 2048, 4096, 6000} (KV_LEN = 3·Q_LEN) and
over a TTT sequence at Q_LEN = 2048 (KV_LEN = Q_LEN·1..7), checks each against fp32
attention with the dense mask, and counts the entries FA4's forward and backward compile
JIT-compiles (``cute.compile`` calls), with the time each step took.

    python benchmarks/fa4_compiles.py --site /opt/fa4site [--spec eagle3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import site
import time
from pathlib import Path

import bench_fa4  # run as a script: benchmarks/ is on the path
import torch

import maskspec
from maskspec.verify import random_inputs


def _check(mask: maskspec.CompiledMask, q_len: int, kv_len: int, dev: torch.device) -> float:
    """FA4 forward+backward at these lengths; the largest relative error against fp32
    (``bench_fa4.reference``)."""
    from flash_attn.cute import flash_attn_func

    b, h, d = 1, 2, 64
    inputs = {k: v.to(dev) for k, v in
              random_inputs(mask, b, h, q_len, kv_len, random.Random(q_len)).items()}
    allowed = mask.dense(b, h, q_len, kv_len, dev, **inputs)
    qkv = [torch.randn(b, n, h, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
           for n in (q_len, kv_len, kv_len)]
    out, _ = flash_attn_func(*qkv, **mask.fa4(b, h, q_len, kv_len, dev, **inputs).kwargs())
    grad = torch.randn_like(out)
    got = [out, *torch.autograd.grad(out, qkv, grad)]
    return max(bench_fa4.rel_err(got, bench_fa4.reference(*qkv, allowed, grad)).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", help="a site directory holding flash-attn-4")
    ap.add_argument("--spec", default="eagle3")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.site:
        site.addsitedir(args.site)
    import cutlass.cute as cute

    compiles = [0]  # every kernel FA4 JIT-compiles goes through cute.compile
    real = cute.compile

    def counting(*a, **kw):
        compiles[0] += 1
        return real(*a, **kw)
    cute.compile = counting
    dev = torch.device("cuda")
    mask = maskspec.load(args.spec)
    steps = [(q, 3 * q) for q in (1000, 2048, 4096, 6000)] + [(2048, 2048 * r)
                                                              for r in range(1, 8)]
    rows = []
    for q_len, kv_len in steps:
        before = compiles[0]
        t0 = time.perf_counter()
        err = _check(mask, q_len, kv_len, dev)
        torch.cuda.synchronize()
        rows.append({"Q_LEN": q_len, "KV_LEN": kv_len, "s": round(time.perf_counter() - t0, 2),
                     "new_compiles": compiles[0] - before, "max_rel_err": err})
        print(rows[-1], flush=True)
    total = compiles[0]
    print({"spec": args.spec, "compiled": total, "torch": torch.__version__,
           "device": torch.cuda.get_device_name(dev)})
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "compiled": total}, indent=1))


if __name__ == "__main__":
    main()
