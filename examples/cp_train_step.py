"""One training step of a toy attention layer with context parallelism, masked by a spec.

    torchrun --nproc-per-node 2 examples/cp_train_step.py --spec eagle3 --q-len 8192 --rounds 3

Each rank holds its load-balanced (head-tail) shard of the queries and, for EAGLE-3, the same
shard of every key round; torch's flex context parallelism all-gathers K/V (rank by rank) and
``CompiledMask.cp_block_mask`` gives the rank's BlockMask for that layout. The step's loss and
gradients are checked against the same step on one GPU with the global BlockMask. Without
CUDA it runs on gloo, up to flex_attention's backward (which needs a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import parallelize_module
from torch.nn.attention.flex_attention import BlockMask, flex_attention

import maskspec
from maskspec.targets import cp

try:  # torch >= 2.10
    from torch.distributed.tensor.experimental._context_parallel._attention import (
        _ContextParallel,
    )
except ImportError:  # older torch
    from torch.distributed.tensor.experimental._attention import _ContextParallel

compiled_flex = torch.compile(flex_attention)


class Attention(nn.Module):
    """flex_attention as a module (its argument order), so torch's context parallelism can
    wrap it: its pre-hook all-gathers key and value along the sequence, rank by rank."""

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        score_mod: None = None, block_mask: BlockMask | None = None,
    ) -> torch.Tensor:
        return compiled_flex(query, key, value, block_mask=block_mask)


class ToyLayer(nn.Module):
    """Queries from the last round, keys and values from every round (EAGLE-3 style TTT)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.attn = Attention()

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, H, N, d)

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor, bm: BlockMask) -> torch.Tensor:
        q, k, v = self.split(self.q(q_in)), self.split(self.k(kv_in)), self.split(self.v(kv_in))
        return self.o(self.attn(q, k, v, block_mask=bm).transpose(1, 2).flatten(-2))


def mask_inputs(name: str, b: int, q_len: int, kv_len: int, ws: int, dev: torch.device) -> dict:
    """Padding for EAGLE-3; documents of lengths that per-document balancing accepts."""
    if name == "eagle3":
        return {"seq_len": torch.tensor([q_len - 333] * b, device=dev)}
    unit = 2 * ws * 64
    cuts = torch.tensor([0, 5, 6, 17, 40, q_len // unit]) * unit
    return {"doc": maskspec.document_ids(cuts.clamp(max=q_len), kv_len).expand(b, -1).to(dev)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="eagle3")
    ap.add_argument("--q-len", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3, help="key rounds (EAGLE-3 TTT steps)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args()

    kind = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a gloo smoke run
    dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    rank, ws = dist.get_rank(), dist.get_world_size()
    dev = torch.device(kind, int(os.environ.get("LOCAL_RANK", rank)) if kind == "cuda" else None)
    if kind == "cuda":
        torch.cuda.set_device(dev)
    mesh = init_device_mesh(kind, (ws,), mesh_dim_names=("cp",))

    mask = maskspec.load(args.spec)
    rounds = args.rounds if args.spec == "eagle3" else 1
    q_len, kv_len, b = args.q_len, args.q_len * rounds, 1
    inputs = mask_inputs(args.spec, b, q_len, kv_len, ws, dev)
    balancer = "per_document" if args.spec.startswith("document") else "head_tail"

    torch.manual_seed(0)  # same weights and data on every rank
    layer = ToyLayer(args.dim, args.heads).to(dev)
    x = torch.randn(b, rounds, q_len, args.dim, device=dev)  # hidden states, round by round
    target = torch.randn(b, q_len, args.dim, device=dev)

    # The rank's part: its shard of the queries, and of every key round, round by round.
    if balancer == "per_document":
        sharding = cp.per_document(cp.document_lengths(inputs["doc"], q_len), ws, dev)
    else:
        sharding = cp.head_tail(q_len, ws, dev)
    order = sharding.order[0]
    mine = cp.local_positions(order, rank, ws)
    q_local, kv_local = x[:, -1, mine], x.flatten(1, 2)[:, cp.local_positions(order, rank, ws,
                                                                                rounds)]
    bm = mask.cp_block_mask(b, args.heads, q_len, kv_len, mesh, load_balancer=balancer, **inputs)

    cp_layer = parallelize_module(ToyLayer(args.dim, args.heads).to(dev), mesh, {
        "attn": _ContextParallel(seq_dim=2, attention_type=_ContextParallel.AttentionType.FLEX)
    })
    cp_layer.load_state_dict(layer.state_dict())
    out = cp_layer(q_local, kv_local, bm)
    loss = ((out - target[:, mine]) ** 2).sum() / target.numel()
    loss.backward()
    for p in cp_layer.parameters():  # data-parallel-style gradient sum over the CP group
        dist.all_reduce(p.grad)
    total = loss.detach().clone()
    dist.all_reduce(total)

    # Reference: the same step on one GPU with the global BlockMask.
    ref_bm = mask.block_mask(b, args.heads, q_len, kv_len, dev, **inputs)
    ref_loss = ((layer(x[:, -1], x.flatten(1, 2), ref_bm) - target) ** 2).sum() / target.numel()
    ref_loss.backward()
    grad_err = max(float((p.grad - r.grad).abs().max() / r.grad.abs().max().clamp(min=1e-12))
                   for p, r in zip(cp_layer.parameters(), layer.parameters(), strict=True))
    result = {"spec": args.spec, "world_size": ws, "q_len": q_len, "kv_len": kv_len,
              "loss": float(total), "single_gpu_loss": float(ref_loss),
              "max_relative_grad_error": grad_err, "torch": torch.__version__,
              "device": torch.cuda.get_device_name(dev) if kind == "cuda" else "cpu"}
    if rank == 0:
        print(json.dumps(result))
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], f"cp_train_step_{args.spec}.json").write_text(
                json.dumps(result, indent=1))
    ok = abs(result["loss"] - result["single_gpu_loss"]) < 1e-4 * abs(ref_loss) + 1e-6
    dist.destroy_process_group()
    if not (ok and grad_err < 1e-3):
        raise SystemExit(f"context-parallel step differs from the single-GPU step: {result}")


if __name__ == "__main__":
    main()
