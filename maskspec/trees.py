"""Draft trees: the ancestor table tree attention reads, from parent pointers.

Speculative-decoding verification (and JetSpec, Medusa, EAGLE-2 tree drafting) flattens a
tree of candidate tokens parent before child; a node attends the nodes on its path from the
root. The ``tree`` spec reads that relation as a table, ``ancestor[b, i, j]``.
"""

from __future__ import annotations

import torch


def tree_ancestors(parents: torch.Tensor) -> torch.Tensor:
    """``bool[B, N, N]``: entry [b, i, j] is true when node j is on node i's path from its
    root (i itself included). ``parents[b, i]`` is node i's parent, -1 for a root (a forest
    is fine); parents come before their children (``parents[b, i] < i``). Accepts shape
    (N,) or (B, N). Costs O(B·N·depth) besides the table itself."""
    parents = torch.as_tensor(parents)
    if parents.dim() == 1:
        parents = parents.unsqueeze(0)
    if parents.dim() != 2:
        raise ValueError(f"parents must have shape (N,) or (B, N), got {list(parents.shape)}")
    if parents.dtype == torch.bool or parents.is_floating_point() or parents.is_complex():
        raise ValueError(f"parents must be integers, got {parents.dtype}")
    b, n = parents.shape
    nodes = torch.arange(n, device=parents.device)
    bad = (parents < -1) | (parents >= nodes)
    if bool(bad.any()):
        at = bad.nonzero()[0].tolist()
        raise ValueError(f"parents[{at[0]}, {at[1]}] = {int(parents[at[0], at[1]])}: a node's "
                         "parent must be an earlier node, or -1 for a root")
    out = torch.zeros(b, n, n, dtype=torch.bool, device=parents.device)
    rows = torch.arange(b, device=parents.device)[:, None].expand(b, n)
    cur = nodes.expand(b, n).clone()
    while bool((cur >= 0).any()):  # climb one generation per step, marking each ancestor
        live = cur >= 0
        out[rows[live], nodes.expand(b, n)[live], cur[live]] = True
        cur = torch.where(live, parents.gather(1, cur.clamp(min=0)), cur)
    return out
