"""FlashAttention-4 driven by one spec, checked against fp32 and timed against flex_attention.

For each case: FA4 (``flash_attn_func`` with maskspec's generated CuTe mask_mod, aux tensors
and forward/backward block-sparse tensors), flex_attention compiled with Triton, and
flex_attention with ``kernel_options={"BACKEND": "FLASH"}`` (maskspec's BlockMask, the
spec's real mask_mod attached). Forward and backward are checked against fp32 attention with
the dense mask (relative Frobenius error of out, dq, dk, dv) and timed forward+backward.

    python benchmarks/bench_fa4.py [--json results.json] [--only eagle3,causal] [--site DIR]

``--site DIR`` adds a site directory (``site.addsitedir``) before flash_attn is imported, for
installs unpacked outside the interpreter's own site-packages.
"""

from __future__ import annotations

import argparse
import json
import random
import site
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import maskspec
from maskspec.verify import random_inputs

SPECS = Path(__file__).resolve().parent.parent / "specs"


@dataclass
class Case:
    spec: str
    B: int
    H: int
    Q: int
    KV: int
    inputs: Callable[[maskspec.CompiledMask, int, int, int, int], dict] = field(repr=False)
    timed: bool = True
    impls: tuple[str, ...] | None = None  # None: every implementation asked for


def _seq_len(mask, b, h, q, kv):
    return {"seq_len": torch.tensor([q, (3 * q) // 4][:b])}


def _random(mask, b, h, q, kv):
    return random_inputs(mask, b, h, q, kv, random.Random(0))


def _none(mask, b, h, q, kv):
    return {}


CASES = [
    Case("eagle3", 2, 4, 1000, 4500, _seq_len, timed=False, impls=("fa4",)),  # Q % 128 != 0
    Case("eagle3", 2, 8, 4096, 20480, _seq_len),
    Case("causal", 1, 8, 8192, 8192, _none),
    Case("document_causal", 1, 8, 8192, 8192, _random),
    Case("sliding_window", 1, 8, 8192, 8192, _none),
]
D = 128


def reference(q, k, v, allowed, grad) -> list[torch.Tensor]:
    """fp32 attention with the dense mask, one head at a time; empty rows give 0."""
    outs: list[list[torch.Tensor]] = [[], [], [], []]
    for h in range(q.shape[2]):
        qkv = [t[:, :, h].detach().float().requires_grad_() for t in (q, k, v)]
        s = torch.einsum("bqd,bkd->bqk", qkv[0], qkv[1]) / q.shape[-1] ** 0.5
        m = allowed[:, min(h, allowed.shape[1] - 1)]
        p = torch.softmax(s.masked_fill(~m, float("-inf")), -1).nan_to_num(0.0)
        o = torch.einsum("bqk,bkd->bqd", p, qkv[2])
        for i, t in enumerate([o, *torch.autograd.grad(o, qkv, grad[:, :, h].float())]):
            outs[i].append(t)
    return [torch.stack(x, 2) for x in outs]


def rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> dict[str, float]:
    names = ("out", "dq", "dk", "dv")
    pairs = zip(names, got, want, strict=True)
    return {n: float((g.float() - w).norm() / w.norm()) for n, g, w in pairs}


def fwd_bwd(f: Callable[[], torch.Tensor], qkv, grad) -> Callable[[], list[torch.Tensor]]:
    def step() -> list[torch.Tensor]:
        out = f()
        return [out, *torch.autograd.grad(out, qkv, grad)]
    return step


def bench_ms(step: Callable[[], object], reps: int = 20) -> float:
    """Median forward+backward time over ``reps`` runs after warm-up (CUDA events)."""
    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def first_call(step: Callable[[], list[torch.Tensor]]) -> tuple[list[torch.Tensor], float]:
    t0 = time.perf_counter()
    res = step()
    torch.cuda.synchronize()
    return res, time.perf_counter() - t0


def run_case(c: Case, impls: list[str]) -> dict:
    from flash_attn.cute import flash_attn_func
    from torch.nn.attention.flex_attention import flex_attention

    dev = torch.device("cuda", torch.cuda.current_device())
    mask = maskspec.load(SPECS / f"{c.spec}.mask")
    inputs = {k: v.to(dev) for k, v in c.inputs(mask, c.B, c.H, c.Q, c.KV).items()}
    g = torch.Generator(device=dev).manual_seed(0)
    qkv = [torch.randn(c.B, n, c.H, D, device=dev, dtype=torch.bfloat16, generator=g)
           .requires_grad_() for n in (c.Q, c.KV, c.KV)]
    grad = torch.randn(c.B, c.Q, c.H, D, device=dev, dtype=torch.bfloat16, generator=g)
    allowed = mask.dense(c.B, 1, c.Q, c.KV, dev, **inputs)
    want = reference(*qkv, allowed, grad)
    del allowed
    row = {"spec": c.spec, "B": c.B, "H": c.H, "Q": c.Q, "KV": c.KV, "D": D,
           "inputs": {k: v.tolist() for k, v in inputs.items() if v.numel() <= 8}}

    t0 = time.perf_counter()
    args = mask.fa4(c.B, c.H, c.Q, c.KV, dev, **inputs)
    torch.cuda.synchronize()
    row["fa4_build_ms"] = 1e3 * (time.perf_counter() - t0)
    kw = args.kwargs()
    fa4_f = fwd_bwd(lambda: flash_attn_func(*qkv, **kw)[0], qkv, grad)

    bm = mask.block_mask(c.B, c.H, c.Q, c.KV, dev, BLOCK_SIZE=128, **inputs)
    row["block_mask_mod"] = bm.mask_mod.__name__
    flex = torch.compile(flex_attention, dynamic=False)
    t = [x.transpose(1, 2) for x in qkv]
    flex_impls = {
        "flex_triton": lambda: flex(*t, block_mask=bm).transpose(1, 2),
        "flex_flash": lambda: flex(*t, block_mask=bm,
                                   kernel_options={"BACKEND": "FLASH"}).transpose(1, 2),
    }
    steps = {"fa4": fa4_f, **{k: fwd_bwd(f, qkv, grad) for k, f in flex_impls.items()}}
    for name in impls:
        try:
            got, first_s = first_call(steps[name])
            row[f"{name}_first_call_s"] = round(first_s, 2)
            row[f"{name}_rel_err"] = rel_err(got, want)
            del got
            if c.timed:
                row[f"{name}_ms"] = round(bench_ms(steps[name]), 3)
        except Exception as e:  # report and go on: one backend failing must not hide the rest
            row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:400]}"
        print(json.dumps({k: v for k, v in row.items() if k.startswith(name)}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", help="comma-separated spec names")
    ap.add_argument("--impls", default="fa4,flex_triton,flex_flash")
    ap.add_argument("--site", help="a site directory holding flash-attn-4")
    a = ap.parse_args()
    if a.site:
        site.addsitedir(a.site)
    from importlib.metadata import version

    import flash_attn.cute  # noqa: F401  (fail early, before any work)

    meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
            "flash_attn_4": version("flash-attn-4"), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(meta), flush=True)
    only = set(a.only.split(",")) if a.only else None
    rows = []
    for c in CASES:
        if (only and c.spec not in only) or not (SPECS / f"{c.spec}.mask").exists():
            continue
        print(f"== {c}", flush=True)
        impls = [i for i in a.impls.split(",") if c.impls is None or i in c.impls]
        rows.append(run_case(c, impls))
        print(json.dumps(rows[-1]), flush=True)
        if a.json:
            a.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
