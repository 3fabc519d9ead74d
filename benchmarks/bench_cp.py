"""Context parallelism on N GPUs: rank-local BlockMask build time, and flex_attention forward
and backward under torch's context parallelism against the single-GPU result.

    torchrun --nproc-per-node 2 benchmarks/bench_cp.py --q-len 32768

Build: ``CompiledMask.cp_block_mask`` vs torch's ``_create_cp_block_mask`` (torch.compile'd
create_block_mask over its rewritten mask_mod; needs KV_LEN == Q_LEN, so not EAGLE-3) and vs
compiled create_block_mask over maskspec's rank-local mask_mod (any layout). Equality of the
blocks is checked against both. Attention: each rank holds its load-balanced shard of Q and of
every K/V round; torch's flex context parallelism all-gathers K/V; out, dQ, dK, dV must equal
the single-GPU flex_attention's at the rank's positions. Results go to $OUT/bench_cp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.parallel import parallelize_module
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

import maskspec
from maskspec.targets import cp
from maskspec.verify import first_difference

try:  # torch >= 2.10
    from torch.distributed.tensor.experimental._context_parallel import _attention as cpa
except ImportError:  # older torch
    from torch.distributed.tensor.experimental import _attention as cpa
from torch.distributed.tensor.experimental._attention import (
    _HeadTailLoadBalancer,
    _PerDocumentHeadTailLoadBalancer,
)

compiled_flex = torch.compile(flex_attention)
compiled_cbm = torch.compile(create_block_mask, dynamic=False, fullgraph=True)


class Attention(nn.Module):
    """flex_attention as a module, for torch's context-parallel pre-hook (K/V all-gather)."""

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        score_mod: None = None, block_mask: BlockMask | None = None,
    ) -> torch.Tensor:
        return compiled_flex(query, key, value, block_mask=block_mask)


def timed(fn: Callable[[], object], reps: int) -> tuple[float, float, object]:
    """(first call ms, median of later calls ms, last result), device-synchronized."""
    times, out = [], None
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(reps + 1):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return times[0], statistics.median(times[1:]), out


def case(name: str, q_len: int, rounds: int, ws: int, dev: torch.device) -> tuple:
    """(mask, KV_LEN, inputs, maskspec balancer, torch balancer, order) for one spec."""
    mask = maskspec.load(name)
    kv_len = q_len * rounds
    if name == "eagle3":
        inputs = {"seq_len": torch.tensor([q_len - 1000], device=dev)}
        return mask, kv_len, inputs, "head_tail", _HeadTailLoadBalancer(q_len, ws, dev), \
            cp.head_tail(q_len, ws, dev).order
    unit = 2 * ws * 64
    cuts = (torch.tensor([0, 3, 4, 11, 30, 31, 50, 10**9]) * unit).clamp(max=q_len)
    ids = maskspec.document_ids(cuts, kv_len).to(dev)
    lengths = cp.document_lengths(ids, q_len)
    return mask, kv_len, {"doc": ids}, "per_document", \
        _PerDocumentHeadTailLoadBalancer(lengths, ws, dev), cp.per_document(lengths, ws, dev).order


def build_times(name: str, args: argparse.Namespace, mesh: DeviceMesh, dev: torch.device
                ) -> dict:
    ws, rounds = mesh.size(), (args.rounds if name == "eagle3" else 1)
    mask, kv_len, inputs, balancer, torch_lb, _ = case(name, args.q_len, rounds, ws, dev)
    h = 1  # the masks do not depend on the head: one BlockMask row serves them all
    first, ours_ms, ours = timed(lambda: mask.cp_block_mask(
        1, h, args.q_len, kv_len, mesh, load_balancer=balancer, check_inputs=False, **inputs),
        args.reps)
    res = {"spec": name, "q_len": args.q_len, "kv_len": kv_len, "maskspec_ms": ours_ms,
           "maskspec_first_ms": first}
    s = args.q_len // ws
    c_first, c_ms, ref = timed(lambda: compiled_cbm(ours.mask_mod, 1, h, s, kv_len, device=dev),
                               args.reps)
    res.update(compiled_local_cbm_ms=c_ms, compiled_local_cbm_first_ms=c_first,
               same_as_compiled_local_cbm=first_difference(ours, ref) is None)
    if kv_len == args.q_len:
        mm = mask.mask_mod(B=1, H=h, Q_LEN=args.q_len, KV_LEN=kv_len, **inputs)
        t_first, t_ms, tref = timed(lambda: cpa._create_cp_block_mask(
            mm, 1, h, args.q_len, kv_len, mesh, torch_lb), args.reps)
        res.update(torch_cp_ms=t_ms, torch_cp_first_ms=t_first,
                   same_as_torch_cp=first_difference(ours, tref) is None)
    return res


def attention_check(name: str, args: argparse.Namespace, mesh: DeviceMesh, dev: torch.device
                    ) -> dict:
    """Forward and backward under context parallelism vs one GPU, at the rank's positions."""
    ws, rank = mesh.size(), mesh.get_local_rank()
    rounds = args.rounds if name == "eagle3" else 1
    mask, kv_len, inputs, balancer, _, order = case(name, args.q_len, rounds, ws, dev)
    torch.manual_seed(0)
    h, d = args.heads, args.head_dim
    q = torch.randn(1, h, args.q_len, d, device=dev, requires_grad=True)
    k, v = (torch.randn(1, h, kv_len, d, device=dev, requires_grad=True) for _ in range(2))
    grad_out = torch.randn(1, h, args.q_len, d, device=dev)

    ref_bm = mask.block_mask(1, h, args.q_len, kv_len, dev, **inputs)
    ref = compiled_flex(q, k, v, block_mask=ref_bm)
    ref.backward(grad_out)

    q_pos = cp.local_positions(order[0], rank, ws)
    kv_pos = cp.local_positions(order[0], rank, ws, rounds)
    lq = q.detach()[:, :, q_pos].requires_grad_()
    lk, lv = (t.detach()[:, :, kv_pos].requires_grad_() for t in (k, v))
    bm = mask.cp_block_mask(1, h, args.q_len, kv_len, mesh, load_balancer=balancer, **inputs)
    attn = parallelize_module(Attention(), mesh, cpa._ContextParallel(
        seq_dim=2, attention_type=cpa._ContextParallel.AttentionType.FLEX))

    def step() -> torch.Tensor:
        for t in (lq, lk, lv):
            t.grad = None
        out = attn(lq, lk, lv, block_mask=bm)
        out.backward(grad_out[:, :, q_pos])
        return out

    _, cp_ms, out = timed(step, args.reps)
    err = torch.stack([
        (out - ref[:, :, q_pos]).abs().max(),
        (lq.grad - q.grad[:, :, q_pos]).abs().max(),
        (lk.grad - k.grad[:, :, kv_pos]).abs().max(),
        (lv.grad - v.grad[:, :, kv_pos]).abs().max(),
    ])
    dist.all_reduce(err, op=dist.ReduceOp.MAX)

    def single() -> None:
        for t in (q, k, v):
            t.grad = None
        compiled_flex(q, k, v, block_mask=ref_bm).backward(grad_out)

    _, single_ms, _ = timed(single, args.reps)
    e = err.tolist()
    return {"spec": name, "q_len": args.q_len, "kv_len": kv_len, "max_abs_err_out": e[0],
            "max_abs_err_dq": e[1], "max_abs_err_dk": e[2], "max_abs_err_dv": e[3],
            "cp_fwd_bwd_ms": cp_ms, "single_gpu_fwd_bwd_ms": single_ms,
            "equal": max(e) < args.tol}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--q-len", type=int, default=32768)
    ap.add_argument("--rounds", type=int, default=3, help="EAGLE-3 key rounds")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-3, help="max abs error (float32)")
    args = ap.parse_args()

    kind = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a gloo smoke run
    dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    rank, ws = dist.get_rank(), dist.get_world_size()
    dev = torch.device(kind, int(os.environ.get("LOCAL_RANK", rank)) if kind == "cuda" else None)
    if kind == "cuda":
        torch.cuda.set_device(dev)
    mesh = init_device_mesh(kind, (ws,), mesh_dim_names=("cp",))

    specs = ("eagle3", "document_causal")
    result = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if kind == "cuda" else "cpu", "world_size": ws,
        "build": [build_times(s, args, mesh, dev) for s in specs],
        "attention": [attention_check(s, args, mesh, dev) for s in specs],
    }
    if rank == 0:
        print(json.dumps(result, indent=1))
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "bench_cp.json").write_text(json.dumps(result, indent=1))
    dist.destroy_process_group()
    if not all(r["equal"] for r in result["attention"]):
        raise SystemExit("context-parallel attention differs from the single-GPU result")


if __name__ == "__main__":
    main()
