"""Builders written by hand, as analytic builders outside maskspec are: what maskspec's
general build is compared with (``bench_build``, ``bench_families``)."""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask


def eagle3_by_hand(q_len: int, rounds: int, bs: int, dev: torch.device) -> BlockMask:
    """EAGLE-3's BlockMask written out by hand, as analytic builders do: aligned shapes only
    (Q_LEN % bs == 0, KV_LEN = rounds · Q_LEN), square blocks, no padding. Row block i: FULL
    context blocks 0..i-1; PARTIAL the diagonal block i of the context and of every round."""
    n = q_len // bs
    i = torch.arange(n, device=dev, dtype=torch.int32)
    r = torch.arange(rounds, device=dev, dtype=torch.int32)
    n_kv = n * rounds
    kv_num = torch.full((1, 1, n), rounds, device=dev, dtype=torch.int32)
    kv_idx = torch.zeros(1, 1, n, n_kv, device=dev, dtype=torch.int32)
    kv_idx[0, 0, :, :rounds] = i.view(-1, 1) + r * n
    full_num = i.view(1, 1, n).clone()
    full_idx = torch.zeros(1, 1, n, n_kv, device=dev, dtype=torch.int32)
    full_idx[0, 0, :, :n] = i
    j = torch.arange(n_kv, device=dev, dtype=torch.int32)
    q_num = torch.ones(1, 1, n_kv, device=dev, dtype=torch.int32)
    q_idx = torch.zeros(1, 1, n_kv, n, device=dev, dtype=torch.int32)
    q_idx[0, 0, :, 0] = j % n
    full_q_num = torch.where(j < n, n - 1 - j, 0).view(1, 1, -1).to(torch.int32)
    full_q_idx = torch.zeros(1, 1, n_kv, n, device=dev, dtype=torch.int32)
    full_q_idx[0, 0, :n, :] = (j[:n].view(-1, 1) + 1 + i) % n
    return BlockMask((q_len, q_len * rounds), kv_num, kv_idx, full_num, full_idx, q_num, q_idx,
                     full_q_num, full_q_idx, (bs, bs), lambda b, h, q, kv: q >= 0)


def eagle3_exact_by_hand(q_len: int, rounds: int, bs: int, dev: torch.device) -> BlockMask:
    """EAGLE-3's BlockMask by hand in create_block_mask's layout, padding included (each row
    of indices: its set blocks, then the unset ones in order), as maskspec writes it: the
    floor of the same output. Aligned shapes, square blocks, at least two row blocks.

    Row block i's PARTIAL key blocks are those ≡ i mod n, so its t-th unset one is
    (t // (n-1))·n + t % (n-1), one more from i on; its FULL ones are 0..i-1, a prefix (the
    row is arange). Key block j's PARTIAL row block is j mod n (its t-th unset one t, one
    more from j mod n on); its FULL ones j+1..n-1, then 0..j."""
    n = q_len // bs
    n_kv = n * rounds
    i32 = torch.int32
    rows = torch.arange(n, device=dev, dtype=i32)
    cols = torch.arange(n_kv, device=dev, dtype=i32)
    t = (cols - rounds).clamp_(min=0)  # position → rank among the unset
    base = t // (n - 1) * n + t % (n - 1)
    jt = (t % (n - 1)).view(1, -1)
    unset = torch.where(jt >= rows.view(-1, 1), base + 1, base)
    kv_idx = torch.where(cols < rounds, rows.view(-1, 1) + cols * n, unset).view(1, 1, n, n_kv)
    full_idx = cols.repeat(n, 1).view(1, 1, n, n_kv)
    own = (cols % n).view(-1, 1)
    p = (rows - 1).clamp_(min=0)
    q_idx = torch.where(rows == 0, own, torch.where(p >= own, p + 1, p)).view(1, 1, n_kv, n)
    full_q_idx = rows.repeat(n_kv, 1)
    full_q_idx[:n] = (cols[:n].view(-1, 1) + 1 + rows) % n
    kv_num = torch.full((1, 1, n), rounds, device=dev, dtype=i32)
    full_num = rows.view(1, 1, n).clone()
    q_num = torch.ones(1, 1, n_kv, device=dev, dtype=i32)
    full_q_num = torch.where(cols < n, n - 1 - cols, 0).view(1, 1, -1)
    return BlockMask((q_len, q_len * rounds), kv_num, kv_idx, full_num, full_idx, q_num, q_idx,
                     full_q_num, full_q_idx.view(1, 1, n_kv, n), (bs, bs),
                     lambda b, h, q, kv: q >= 0)
