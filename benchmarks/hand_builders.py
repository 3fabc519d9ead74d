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
