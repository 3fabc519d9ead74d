"""Runtime inputs: bind user tensors to a spec's declared inputs, with checks that name them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from maskspec import ir
from maskspec.errors import MaskSpecError, did_you_mean


def sizes_of(B: int, H: int, Q_LEN: int, KV_LEN: int) -> dict[str, int]:
    """The size environment, after checking the sizes are positive integers."""
    sizes = {"B": B, "H": H, "Q_LEN": Q_LEN, "KV_LEN": KV_LEN}
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive int, got {v!r}")
        if v >= 2**31:
            raise ValueError(f"{k} must be below 2**31 (BlockMask indices are int32), got {v}")
    return sizes


def _where(d: ir.InputDecl, mask: ir.MaskIR) -> str:
    return f"{mask.path}:{d.pos.line}" if d.pos else mask.path


def block_size_of(bs: int | tuple[int, int]) -> tuple[int, int]:
    """BLOCK_SIZE as a (Q_BS, KV_BS) pair of positive ints, as create_block_mask takes it."""
    pair = tuple(bs) if isinstance(bs, (tuple, list)) else (bs, bs)
    if len(pair) != 2 or any(not isinstance(x, int) or x < 1 for x in pair):
        raise ValueError(f"BLOCK_SIZE must be a positive int or a (Q_BS, KV_BS) pair, got {bs!r}")
    return pair  # type: ignore[return-value]


def _same_device(have: torch.device, want: torch.device) -> bool:
    """`cuda` means the current CUDA device, so it matches `cuda:0` when that is current."""
    if have.type != want.type:
        return False
    if want.index is None and want.type == "cuda":
        return have.index in (None, torch.cuda.current_device())
    return want.index is None or have.index == want.index


def _to_tensor(name: str, value: Any, dtype: str, device: torch.device | None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if device is not None and not _same_device(value.device, torch.device(device)):
            raise ValueError(
                f"input `{name}` is on {value.device} but the mask is built on {device}; "
                f"move it with `.to({str(device)!r})`"
            )
        return value
    if isinstance(value, (int, bool, Sequence)) and not isinstance(value, str):
        t = torch.as_tensor(value, device=device)
        return t.bool() if dtype == "bool" and t.dtype != torch.bool else t
    raise ValueError(f"input `{name}` must be a tensor or a list of numbers, got {type(value)}")


def _check_dtype(name: str, t: torch.Tensor, dtype: str) -> None:
    if dtype == "bool" and t.dtype != torch.bool:
        raise ValueError(f"input `{name}` must be a bool tensor, got {t.dtype}")
    if dtype == "int" and (t.dtype == torch.bool or t.is_floating_point() or t.is_complex()):
        raise ValueError(f"input `{name}` must be an integer tensor, got {t.dtype}")


def _check_range(name: str, t: torch.Tensor, lo: int, hi: int) -> None:
    bad = (t < lo) | (t > hi)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"input `{name}` must lie in [{lo}, {hi}] but {name}{list(where)} = "
            f"{int(t[where])}"
        )


def _check_sorted(name: str, t: torch.Tensor) -> None:
    drops = t[..., 1:] < t[..., :-1]
    if bool(drops.any()):
        where = [int(i) for i in drops.nonzero()[0]]
        where[-1] += 1
        raise ValueError(
            f"input `{name}` holds document ids and must be non-decreasing along each "
            f"sequence (packed documents), but {name}{where} = {int(t[tuple(where)])} "
            "follows a larger id; build ids from offsets with maskspec.document_ids()"
        )


def bind_inputs(
    mask: ir.MaskIR,
    sizes: Mapping[str, int],
    given: Mapping[str, Any],
    device: torch.device | str | None,
    check: bool = True,
) -> dict[str, torch.Tensor]:
    """Tensors for every declared input: given ones checked, missing ones from defaults.

    ``check`` also verifies value ranges, which reads the values (a device sync on GPU);
    turn it off inside CUDA graphs or hot loops once inputs are known to be good.
    """
    decls = {d.name: d for d in mask.inputs}
    for k in given:
        if k not in decls:
            hint = did_you_mean(k, decls)
            raise ValueError(
                f"spec `{mask.name}` has no input `{k}`"
                + (f"; {hint}" if hint else f" (inputs: {', '.join(decls) or 'none'})")
            )
    out = {}
    for name, d in decls.items():
        shape = tuple(ir.const_value(s, sizes) for s in d.shape)
        if name in given and given[name] is not None:
            t = _to_tensor(name, given[name], d.dtype, device)
            _check_dtype(name, t, d.dtype)
            if d.dtype == "int" and t.dtype != torch.int64:
                t = t.to(torch.int64)  # the spec's arithmetic is on integers: no wrapping
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"input `{name}` must have shape {list(shape)} (declared at "
                    f"{_where(d, mask)}), got {list(t.shape)}"
                )
        elif d.default is not None:
            dtype = torch.bool if d.dtype == "bool" else torch.int64
            t = torch.full(shape, ir.const_value(d.default, sizes), dtype=dtype, device=device)
        else:
            raise ValueError(f"input `{name}` is required (declared at {_where(d, mask)})")
        if check and d.range is not None:
            lo, hi = (ir.const_value(e, sizes) for e in d.range)
            _check_range(name, t, lo, hi)
        if check and name in mask.document_inputs():
            _check_sorted(name, t)
        out[name] = t
    check_divisors(mask, sizes)
    check_index_bounds(mask, sizes, out)
    return out


def check_index_bounds(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor]
) -> None:
    """Every input lookup stays inside its tensor for all real (b, h, q): checked statically."""
    ranges = {"b": (0, sizes["B"] - 1), "h": (0, sizes["H"] - 1), "q": (0, sizes["Q_LEN"] - 1)}
    for e in mask.exprs():
        for node in e.walk():
            if not isinstance(node, ir.Load):
                continue
            t = inputs[node.input]
            for dim, a in enumerate(node.args):
                lo, hi = ir.bounds(a, ranges, sizes, {})
                if math.isfinite(lo - hi) and (lo < 0 or hi > t.shape[dim] - 1):
                    raise MaskSpecError(
                        f"index {dim} of `{node.input}` ranges over [{lo}, {hi}] at "
                        f"B={sizes['B']}, H={sizes['H']}, Q_LEN={sizes['Q_LEN']}, "
                        f"KV_LEN={sizes['KV_LEN']}, but that dimension has {t.shape[dim]} "
                        "entries", node.pos, source=mask.source, path=mask.path,
                        hint="declare the input's shape to cover every index, e.g. "
                        "`(Q_LEN + block - 1) // block` for `q // block`",
                    )


def check_divisors(mask: ir.MaskIR, sizes: Mapping[str, int]) -> None:
    """Divisors, periods and chunk sizes that depend on sizes are positive at these sizes."""
    where = f"Q_LEN={sizes['Q_LEN']}, KV_LEN={sizes['KV_LEN']}, B={sizes['B']}, H={sizes['H']}"
    for t in mask.terms:
        for c in t.element_conds():
            for e in c.exprs():
                for node in e.walk():
                    if isinstance(node, ir.Bin) and node.op in ("//", "%"):
                        value = ir.const_value(node.b, sizes)
                        if value < 1:
                            raise MaskSpecError(
                                f"this divisor is {value} at {where}; it must be positive",
                                node.b.pos or node.pos or c.pos, source=mask.source,
                                path=mask.path, hint="guard the sizes you build with, or "
                                "divide by an expression that stays >= 1",
                            )
