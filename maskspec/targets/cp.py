"""Context parallelism: each rank's BlockMask in torch's load-balanced order, built analytically.

torch's context parallelism (``torch.distributed.tensor.experimental``) rearranges the
sequence with a load balancer's ``order`` (slot i holds original position ``order[b, i]``),
gives rank r the slots [r·S, (r+1)·S), S = Q_LEN / world_size, and all-gathers K/V for
flex_attention, so every rank attends its query shard to all keys, rank by rank. Local query
i is global query ``order[b, r·S + i]``; gathered key j is global key ``key_order[b, j]``.

EAGLE-3 (KV_LEN = R·Q_LEN: a context round then R-1 draft rounds): each rank holds its shard
of every round, concatenated round by round, so the gathered keys arrive rank by rank, round
by round: gathered slot (r', t, j) holds global key t·Q_LEN + order[b, r'·S + j]. With R = 1
this is torch's own layout.

The rank's mask is the global one with rows picked and columns permuted. Rows: the shared
lowering evaluated at the rank's query positions only. Columns: ``order`` is made of runs of
consecutive positions whose lengths and starts are multiples of ``run``; with g =
gcd(kv_block, run) every gathered g-block is one original g-block, so blocks are classified
at (q_block, g), their columns gathered into key order and OR-ed (touched) / AND-ed (full)
per kv_block. Cost: the rank's own output (times kv_block / g), no Q×KV work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask

from maskspec import blocks, ir
from maskspec.context import BuildContext
from maskspec.cuda import dispatch
from maskspec.mask_mod import MaskMod
from maskspec.targets import flex


@dataclass(frozen=True)
class Sharding:
    """A load-balanced order: ``order`` (1 or B, L) holds runs of consecutive positions,
    each ``run``-aligned (length and start in both orders multiples of ``run``)."""

    order: torch.Tensor
    run: int


def identity(length: int, device: torch.device) -> Sharding:
    """No load balancing: contiguous shards."""
    return Sharding(torch.arange(length, device=device).unsqueeze(0), length)


def head_tail(length: int, world_size: int, device: torch.device) -> Sharding:
    """torch's head-tail balancer: 2·world_size chunks, rank r gets chunks r and 2·ws-1-r."""
    if length % (2 * world_size):
        raise ValueError(
            f"head-tail load balancing splits Q_LEN into 2·world_size = {2 * world_size} "
            f"chunks, but Q_LEN = {length} is not a multiple; pad Q_LEN or use "
            "load_balancer=None"
        )
    chunk = length // (2 * world_size)
    chunks = torch.arange(length, device=device).view(2 * world_size, chunk)
    head = torch.arange(world_size, device=device)
    paired = torch.stack([chunks[head], chunks[2 * world_size - 1 - head]], dim=1)
    return Sharding(paired.reshape(1, -1), chunk)


def per_document(lengths: list[list[int]], world_size: int, device: torch.device) -> Sharding:
    """torch's per-document head-tail balancer: head-tail inside every document."""
    orders, run = [], 0
    for row in lengths:
        parts, start = [], 0
        for n in row:
            if n % (2 * world_size):
                raise ValueError(
                    f"per-document load balancing needs every document's length to be a "
                    f"multiple of 2·world_size = {2 * world_size}, got a document of {n} "
                    f"tokens at position {start}; pad documents or use load_balancer='head_tail'"
                )
            parts.append(head_tail(n, world_size, device).order[0] + start)
            run = math.gcd(run, n // (2 * world_size))
            start += n
        orders.append(torch.cat(parts))
    return Sharding(torch.stack(orders), run)


def from_order(order: torch.Tensor, q_len: int, batch: int) -> Sharding:
    """Any rearrangement (e.g. a torch ``_LoadBalancer._generate_indices()``): runs read on host.
    Each row must be a permutation of the Q_LEN positions (one row, or one per sample)."""
    order = order if order.dim() == 2 else order.unsqueeze(0)
    if order.dim() != 2 or order.shape[0] not in (1, batch) or order.shape[1] != q_len:
        raise ValueError(
            f"a load_balancer order must have shape (Q_LEN,), (1, Q_LEN) or (B, Q_LEN) = "
            f"({batch}, {q_len}), got {tuple(order.shape)}"
        )
    ok = torch.sort(order, dim=-1).values == torch.arange(q_len, device=order.device)
    if not bool(ok.all()):
        row = int((~ok).any(-1).nonzero()[0])
        raise ValueError(
            f"a load_balancer order must hold every position 0..Q_LEN-1 = {q_len - 1} once per "
            f"row; row {row} does not (a repeated, missing or out-of-range position)"
        )
    breaks = (order[:, 1:] != order[:, :-1] + 1).any(0).nonzero().flatten() + 1
    breaks = torch.cat([breaks.new_zeros(1), breaks])
    starts = order[:, breaks].flatten().tolist() + breaks.tolist()
    return Sharding(order, math.gcd(order.shape[-1], *starts))


def document_lengths(ids: torch.Tensor, length: int) -> list[list[int]]:
    """Per batch row, the lengths of the documents (runs of equal ids) in the first positions."""
    return [
        torch.unique_consecutive(row[:length], return_counts=True)[1].tolist() for row in ids
    ]


def sharding(
    mask: ir.MaskIR, load_balancer: object, q_len: int, world_size: int, device: torch.device,
    inputs: dict[str, torch.Tensor], batch: int = 1,
) -> Sharding:
    """The order a ``load_balancer`` argument names: None, "head_tail", "per_document"
    (documents from the spec's document ids), an order tensor or a torch ``_LoadBalancer``."""
    if load_balancer is None:
        return identity(q_len, device)
    if load_balancer == "head_tail":
        return head_tail(q_len, world_size, device)
    if load_balancer == "per_document":
        docs = sorted(mask.document_inputs())
        if len(docs) != 1:
            raise ValueError(
                f"load_balancer='per_document' reads the documents of the spec's document(...) "
                f"ids, but spec `{mask.name}` has {len(docs)} document inputs; pass the order "
                "tensor instead"
            )
        return per_document(document_lengths(inputs[docs[0]], q_len), world_size, device)
    if isinstance(load_balancer, torch.Tensor):
        return from_order(load_balancer.to(device=device, dtype=torch.long), q_len, batch)
    if hasattr(load_balancer, "_generate_indices"):
        indices = load_balancer._generate_indices().to(device=device, dtype=torch.long)
        return from_order(indices, q_len, batch)
    raise ValueError(
        f"load_balancer must be None, 'head_tail', 'per_document', an order tensor (1 or B, "
        f"Q_LEN) or a torch _LoadBalancer, got {load_balancer!r}"
    )


def placement(
    mesh: object, rank: int | None, world_size: int | None, device: object
) -> tuple[int, int, object]:
    """(rank, world_size, device) from a 1-D DeviceMesh or from explicit values."""
    if mesh is not None:
        if rank is not None or world_size is not None:
            raise ValueError("pass either mesh or rank and world_size, not both")
        return mesh.get_local_rank(), mesh.size(), device or mesh.device_type  # type: ignore
    if rank is None or world_size is None:
        raise ValueError("pass mesh=<1-D DeviceMesh>, or rank=... and world_size=...")
    return rank, world_size, device


def local_positions(order: torch.Tensor, rank: int, world_size: int, rounds: int = 1
                    ) -> torch.Tensor:
    """Global positions of a rank's local slots: its shard of each round, round by round.

    ``x.index_select(seq_dim, local_positions(order[0], ...))`` is the rank's part of x
    (queries: rounds=1; keys and values of R rounds: rounds=R). ``order``: (..., Q_LEN).
    """
    length = order.shape[-1]
    shard = length // world_size
    mine = order[..., rank * shard:(rank + 1) * shard]
    return torch.cat([mine + t * length for t in range(rounds)], dim=-1)


def key_order(sharding: Sharding, world_size: int, rounds: int) -> torch.Tensor:
    """Global key of every gathered key slot: the ranks' local keys, rank by rank."""
    return torch.cat([local_positions(sharding.order, r, world_size, rounds)
                      for r in range(world_size)], dim=-1)


def _gather_columns(grid: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """grid[..., cols[b]] per batch row, broadcasting grid's and cols' batch dims."""
    n_b = max(grid.shape[0], cols.shape[0])
    idx = cols.view(cols.shape[0], 1, 1, -1).expand(n_b, *grid.shape[1:3], -1)
    return grid.expand(n_b, *grid.shape[1:]).gather(-1, idx)


def _coarsen(grid: torch.Tensor, m: int, n_kv: int, fill: bool) -> torch.Tensor:
    """Group every m columns into one: all (fill=True) or any (fill=False) of the group."""
    pad = n_kv * m - grid.shape[-1]
    padded = torch.nn.functional.pad(grid, (0, pad), value=False)
    groups = padded.view(*grid.shape[:-1], n_kv, m)
    return groups.all(-1) if fill else groups.any(-1)


def local_grid(
    ctx: BuildContext, q_positions: torch.Tensor, keys: torch.Tensor, run: int
) -> blocks.BlockGrid:
    """The rank's FULL/PARTIAL grid: its query rows against the keys in gathered order."""
    q_bs, kv_bs = ctx.block_size
    kv_len = ctx.kv_len
    g = math.gcd(kv_bs, run)
    fine = blocks.classify_at(ctx, q_positions, q_positions.shape[-1], (q_bs, g),
                             dispatch.decide_blocks)
    cols = keys[:, ::g] // g  # the global g-block held by every gathered g-block
    full = _gather_columns(fine.full, cols)
    touched = _gather_columns(fine.full | fine.partial, cols)
    n_kv = -(-kv_len // kv_bs)
    full = _coarsen(full, kv_bs // g, n_kv, fill=True)
    touched = _coarsen(touched, kv_bs // g, n_kv, fill=False)
    return blocks.BlockGrid(partial=touched & ~full, full=full)


def local_mask_mod(mm: MaskMod, q_positions: torch.Tensor, keys: torch.Tensor) -> MaskMod:
    """The spec's mask_mod on local indices: local q and gathered kv mapped to global ones."""
    per_batch = q_positions.shape[0] > 1

    def cp_mask_mod(
        b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        row = b if per_batch else 0
        return mm(b, h, q_positions[row, q_idx], keys[row, kv_idx])

    cp_mask_mod.__name__ = f"cp_{getattr(mm, '__name__', 'mask_mod')}"
    return cp_mask_mod


def check_layout(q_len: int, kv_len: int, world_size: int, rank: int) -> int:
    """Validate the sharded shapes; returns the number of key rounds R = KV_LEN / Q_LEN."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, "
                         f"world_size={world_size}")
    if q_len % world_size:
        raise ValueError(
            f"context parallelism shards Q_LEN evenly: Q_LEN = {q_len} is not a multiple of "
            f"world_size = {world_size}; pad the sequence"
        )
    if kv_len % q_len:
        raise ValueError(
            f"under context parallelism every rank holds the same shard of each key round, so "
            f"KV_LEN must be a multiple of Q_LEN (whole rounds), got Q_LEN={q_len}, "
            f"KV_LEN={kv_len}"
        )
    return kv_len // q_len


def block_mask(
    ctx: BuildContext, mm: MaskMod, sharding: Sharding, rank: int, world_size: int
) -> BlockMask:
    """Rank ``rank``'s BlockMask: (Q_LEN / world_size) local queries × KV_LEN gathered keys."""
    sizes = ctx.sizes
    rounds = check_layout(sizes["Q_LEN"], sizes["KV_LEN"], world_size, rank)
    if sharding.order.shape[-1] != sizes["Q_LEN"]:
        raise ValueError(f"the load balancer's order has {sharding.order.shape[-1]} positions, "
                         f"Q_LEN is {sizes['Q_LEN']}")
    shard = sizes["Q_LEN"] // world_size
    q_positions = local_positions(sharding.order, rank, world_size)
    keys = key_order(sharding, world_size, rounds)
    run = sharding.run if rounds == 1 else math.gcd(sharding.run, shard)
    grid = local_grid(ctx, q_positions, keys, run)
    local_mm = local_mask_mod(mm, q_positions, keys)
    return flex.block_mask(grid, shard, ctx.kv_len, ctx.block_size, local_mm)
