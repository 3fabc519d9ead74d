"""Runtime inputs: bind user tensors to a spec's declared inputs, with checks that name them."""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch

from maskspec import deferred, ir, scan
from maskspec.caches import MISSING, PerMask
from maskspec.errors import SizesError, did_you_mean


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
    if len(pair) != 2 or any(not isinstance(x, int) or isinstance(x, bool) or x < 1
                             for x in pair):
        raise ValueError(f"BLOCK_SIZE must be a positive int or a (Q_BS, KV_BS) pair, got {bs!r}")
    return pair  # type: ignore[return-value]


def device_of(device: Any) -> torch.device:
    """The device to build on, checked: a torch device that holds values (not meta), CUDA
    only where this torch has it (remembered per value: builds repeat it)."""
    try:
        return _device_of(device)
    except TypeError:  # unhashable: not a device, as ``_device_of`` says
        return _device_of.__wrapped__(device)


@functools.lru_cache(maxsize=64)
def _device_of(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (e.g. 'cpu', 'cuda', "
                         "'cuda:1')") from None
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no values: build masks on 'cpu' or 'cuda' (meta "
                         "input tensors likewise)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r}, but this torch has no usable CUDA "
                         "(torch.cuda.is_available() is False): build on 'cpu'")
    return dev


def _same_device(have: torch.device, want: torch.device) -> bool:
    """`cuda` means the current CUDA device, so it matches `cuda:0` when that is current."""
    if have.type != want.type:
        return False
    if want.type in ("cpu", "meta"):  # one device, whatever index is written
        return True
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
        try:
            t = torch.as_tensor(value, device=device)
        except (OverflowError, RuntimeError, TypeError, ValueError) as err:
            raise ValueError(
                f"input `{name}` cannot be made a tensor ({err}): give a tensor, or a "
                f"rectangular list of integers within ±{ir.MAX_NUMBER}") from None
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

    ``check`` also verifies value ranges (on CUDA on the device, read later; see
    ``check_bound``). Unchecked values are ``sanitized``.
    """
    names = [k for k, v in given.items() if v is not None]
    return check_bound(mask, sizes, convert_inputs(mask, sizes, given, device), check, names)


def convert_inputs(
    mask: ir.MaskIR, sizes: Mapping[str, int], given: Mapping[str, Any],
    device: torch.device | str | None,
) -> dict[str, torch.Tensor]:
    """Every declared input as a tensor of its declared shape, dtype kind and device (given
    ones converted and checked, missing ones from defaults). Reads no values and keys nothing
    on concrete sizes, so it traces under torch.compile."""
    decls = {d.name: d for d in mask.inputs}
    for k in given:
        if k not in decls:
            hint = did_you_mean(k, decls)
            raise ValueError(
                f"spec `{mask.name}` has no input `{k}`"
                + (f"; {hint}" if hint else f" (inputs: {', '.join(decls) or 'none'})")
            )
    out = {}
    shapes = _declared_shapes(mask, sizes)
    for name, d in decls.items():
        shape = shapes[name]
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
            value = _at_sizes(d.default, sizes, f"the default of input `{name}`", d, mask)
            t = torch.full(shape, value, dtype=dtype, device=device)
        else:
            raise ValueError(f"input `{name}` is required (declared at {_where(d, mask)})")
        out[name] = t
    return out


def _declared_shapes(mask: ir.MaskIR, sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Every input's declared shape at these sizes, checked to have no empty dimension
    (cached per sizes, but while torch.compile traces: a lookup would specialize them)."""
    concrete = not torch.compiler.is_compiling()
    key = ir.size_key(sizes)
    hit = _SHAPES.get(mask, key) if concrete else None
    if hit is not None:
        return hit
    shapes = {}
    for d in mask.inputs:
        shape = tuple(_at_sizes(s, sizes, f"a dimension of input `{d.name}`", d, mask)
                      for s in d.shape)
        if any(n < 1 for n in shape):
            raise ValueError(
                f"input `{d.name}` (declared at {_where(d, mask)}) would have shape "
                f"{list(shape)} at {sizes_text(sizes)}: every dimension must be at least 1"
            )
        shapes[d.name] = shape
    return _SHAPES.put(mask, key, shapes) if concrete else shapes


DEFERRED_DEVICES = {"cuda"}  # device types whose value checks run there, read later


def check_bound(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: dict[str, torch.Tensor], check: bool,
    given: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """What ``convert_inputs`` leaves for concrete sizes and values: the checks the sizes
    alone decide (once per sizes), then either the value checks (``check``; they read the
    values) or ``sanitized`` values. On CUDA (``DEFERRED_DEVICES``) the value checks run
    on the device and are read by a later build (``deferred``): the build goes on with the
    sanitized values, which equal the given ones when they pass. Only the ``given`` inputs
    (None: all) are checked or sanitized: defaults lie in their ranges (the compiler checks
    them)."""
    key = ir.size_key(sizes)
    reads = _STATIC_OK.get(mask, key, MISSING)
    if reads is MISSING:  # what the sizes alone decide, once per sizes
        check_divisors(mask, sizes)
        check_value_ranges(mask, sizes, inputs)
        reads = _STATIC_OK.put(mask, key,
                               check_index_bounds(mask, sizes, inputs, check, static=True))
    part = inputs if given is None else {k: inputs[k] for k in given}
    if not check:
        return {**inputs, **sanitized(mask, sizes, part)}
    device = next((t.device for t in inputs.values()), None)
    if device is not None and device.type in DEFERRED_DEVICES:
        return _checked_later(mask, sizes, inputs, part, device, reads)
    _check_values(mask, sizes, part)
    if reads:
        check_index_bounds(mask, sizes, inputs, check, static=False)
    return inputs


def _check_values(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor]
) -> None:
    """The value checks of these inputs, on the host: ranges, and document ids in order."""
    for d in mask.inputs:
        if d.name not in inputs:
            continue
        t = inputs[d.name]
        if d.dtype == "int":  # bools take no range (the compiler refuses one)
            _check_range(d.name, t, *_value_range(d, sizes, mask))
        if d.name in mask.document_inputs():
            _check_sorted(d.name, t)


def _checked_later(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: dict[str, torch.Tensor],
    part: dict[str, torch.Tensor], device: torch.device, reads_values: bool,
) -> dict[str, torch.Tensor]:
    """The value checks on the device (``flagged``), watched by ``deferred``: first the
    earlier builds' checks that have landed are read (one that failed raises here), then
    this build's sanitized values are returned. Lookups indexed by input values still
    check their bounds on the host (a sync). Inside a CUDA graph capture nothing can be
    read back: the values are only sanitized there."""
    deferred.poll(device)
    fixed, bad = flagged(mask, sizes, part)
    clean = {**inputs, **fixed}
    if reads_values:
        check_index_bounds(mask, sizes, clean, True, static=False)
    if bad is not None and not (device.type == "cuda"
                                and torch.cuda.is_current_stream_capturing()):
        deferred.watch(bad, functools.partial(report_failed, mask, dict(sizes), dict(part)))
    return clean


def flagged(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor],
    check: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """``sanitized``, and (``check``) on the inputs' device a 0-dim int32 that is 1 when
    some value fails the value checks: exactly where sanitizing changed it (passing values
    are left alone), found as they are sanitized (``scan.cleaned``). None when not
    checking or nothing is sanitized (no integer inputs)."""
    ints = [inputs[d.name] for d in mask.inputs if d.dtype == "int" and d.name in inputs]
    if not (check and ints):
        return sanitized(mask, sizes, inputs), None
    flag = torch.zeros((), dtype=torch.int32, device=ints[0].device)
    return sanitized(mask, sizes, inputs, flag), flag


def report_failed(
    mask: ir.MaskIR, sizes: Mapping[str, int], given: Mapping[str, torch.Tensor],
    replays: str = "",
) -> None:
    """Raise the error of a build whose device-side value check failed, found later: the
    host checks' message on the same tensors, saying which build it was."""
    where = (f"an earlier build of `{mask.name}` at {sizes_text(sizes)}{replays}, checked on "
             "the device and reported at this call")
    used = ("that build used the values clamped into range and document ids raised to "
            "the largest one before them (what check_inputs=False builds)")
    try:
        _check_values(mask, sizes, given)
    except ValueError as err:
        raise ValueError(f"{err} — in {where}; {used}") from None
    raise ValueError(f"{where[0].upper()}{where[1:]}, was given values outside their declared "
                     f"ranges or unsorted document ids; the tensors have changed since, so "
                     f"which values is not known; {used}")


def sanitized(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor],
    flag: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """What an unchecked build reads in place of its inputs: integer inputs clamped into
    their declared ranges (undeclared: ±MAX_NUMBER), document ids made non-decreasing
    along each sequence (each id raised to the largest one before it). Values that would
    pass the checks are unchanged. The BlockMask and the mask_mod it carries read the same
    values, so an unchecked build never disagrees with its own mask_mod, whatever it is
    given; tensor ops only (no sync: graph-capturable). ``flag``: set to 1 where a value
    changed (``flagged``)."""
    decls = {d.name: d for d in mask.inputs}
    out = dict(inputs)
    docs = mask.document_inputs()
    for name, t in inputs.items():
        d = decls[name]
        if d.dtype == "int":
            out[name] = scan.cleaned(t, *_value_range(d, sizes, mask), name in docs, flag)
    return out


def reads_values(mask: ir.MaskIR, sizes: Mapping[str, int]) -> bool:
    """Whether checking a build at these sizes reads input values on the host (a lookup
    whose index reads another input): known once a build at them was bound."""
    return _STATIC_OK.get(mask, ir.size_key(sizes), True) is not False


# Per (mask, sizes): the divisors and input lookups were checked, and whether some lookup's
# bounds need the values (a repeated build skips the checks); the inputs' declared shapes.
_STATIC_OK = PerMask(4096)
_SHAPES = PerMask(4096)


def sizes_text(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={sizes[k]}" for k in ir.SIZES)


def _at_sizes(
    e: ir.Expr, sizes: Mapping[str, int], what: str, d: ir.InputDecl, mask: ir.MaskIR
) -> int:
    """A declaration's constant at these sizes; a division by zero names the declaration."""
    try:
        return ir.const_value(e, sizes)
    except ZeroDivisionError:
        raise _divides_by_zero(what, d, mask, sizes) from None


def _value_range(d: ir.InputDecl, sizes: Mapping[str, int], mask: ir.MaskIR) -> tuple[int, int]:
    """``d.value_range(sizes)``; a division by zero names the declaration."""
    try:
        return d.value_range(sizes)
    except ZeroDivisionError:
        raise _divides_by_zero(f"the range of input `{d.name}`", d, mask, sizes) from None


def _divides_by_zero(what: str, d: ir.InputDecl, mask: ir.MaskIR,
                     sizes: Mapping[str, int]) -> ValueError:
    return ValueError(
        f"{what} (declared at {_where(d, mask)}) divides by zero at {sizes_text(sizes)}")


def _value_bounds(
    e: ir.Expr, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor]
) -> tuple[int, int]:
    """(min, max) of an index that reads inputs, evaluated over every real (b, h, q)."""
    dims = {"b": sizes["B"], "h": sizes["H"], "q": sizes["Q_LEN"]}
    grid = {v: torch.arange(n if ir.uses(e, ir.Var, v) else 1).view(
        *[-1 if w == v else 1 for w in dims]) for v, n in dims.items()}
    device = next(iter(inputs.values())).device
    env = ir.Env({v: g.to(device) for v, g in grid.items()}, sizes, inputs)
    values = torch.as_tensor(ir.evaluate(e, env))
    return int(values.min()), int(values.max())


def _positions(sizes: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """The real values of b, h, q and kv at these sizes, inclusive."""
    return {"b": (0, sizes["B"] - 1), "h": (0, sizes["H"] - 1),
            "q": (0, sizes["Q_LEN"] - 1), "kv": (0, sizes["KV_LEN"] - 1)}


def check_index_bounds(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor],
    check: bool = True, static: bool | None = None,
) -> bool:
    """Every input lookup stays inside its tensor for all real (b, h, q): from the index's
    bounds at these sizes or, for an index that reads inputs, from its values everywhere
    (when ``check`` lets it read them). Lookups are clamped when evaluated, so an unchecked
    out-of-range index would silently reuse an edge value. ``static`` True (False) checks
    only the indices whose bounds the sizes decide (that read inputs); None, both. Returns
    whether some index's bounds need the values."""
    ranges = _positions(sizes)
    reads = False
    for e in mask.exprs():
        for node in e.walk():
            if not isinstance(node, ir.Load):
                continue
            for dim, a in enumerate(node.args):
                lo, hi = ir.bounds(a, ranges, sizes, {})
                known = math.isfinite(lo - hi)
                reads = reads or not known
                if (not known and not check) or static is (not known):
                    continue
                if not known:
                    lo, hi = _value_bounds(a, sizes, inputs)
                n = inputs[node.input].shape[dim]
                if lo < 0 or hi > n - 1:
                    raise SizesError(
                        f"index {dim} of `{node.input}` ranges over [{lo}, {hi}] at "
                        f"{sizes_text(sizes)}, but that dimension has {n} entries", node.pos,
                        source=mask.source, path=mask.path,
                        hint="declare the input's shape to cover every index, e.g. "
                        "`(Q_LEN + block - 1) // block` for `q // block`" if known else
                        "the index reads inputs whose values send it outside",
                    )
    return reads


def check_value_ranges(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor]
) -> None:
    """Every value the mask's arithmetic computes at these sizes — its conditions, its
    primitives' arguments and the row programs derived from them — stays within
    ±MAX_VALUE, by interval arithmetic over the positions and the inputs' value ranges: a
    larger one would wrap in 64-bit integers and silently change the mask."""
    ranges = _positions(sizes)
    values = {d.name: _value_range(d, sizes, mask) for d in mask.inputs}
    lengths = {k: t.shape[-1] for k, t in inputs.items() if t.dim()}
    for t in mask.terms:
        def visit(e: ir.Expr, iv: ir.Interval, pos: ir.Pos | None = t.pos) -> None:
            far = max((abs(x) for x in iv if math.isfinite(x)), default=0)
            if far > ir.MAX_VALUE:
                raise SizesError(
                    f"this expression reaches {far:.3g} at {sizes_text(sizes)}, past the "
                    f"±2**62 within which the mask's 64-bit arithmetic is exact",
                    e.pos or pos, source=mask.source, path=mask.path,
                    hint="use smaller factors, or build at smaller sizes",
                )
        program = t.program
        for e in (*t.exprs(), *program.exprs(), *program.widths, *program.extent[0],
                  *program.extent[1]):
            ir.bounds(e, ranges, sizes, values, lengths, visit)


def check_divisors(mask: ir.MaskIR, sizes: Mapping[str, int]) -> None:
    """Divisors, periods and chunk sizes that depend on sizes are positive at these sizes."""
    where = sizes_text(sizes)
    for t in mask.terms:
        for c in t.element_conds():
            for e in c.exprs():
                for node in e.walk():
                    if isinstance(node, ir.Bin) and node.op in ("//", "%"):
                        value = ir.const_value(node.b, sizes)
                        if value < 1:
                            raise SizesError(
                                f"this divisor is {value} at {where}; it must be positive",
                                node.b.pos or node.pos or c.pos, source=mask.source,
                                path=mask.path, hint="guard the sizes you build with, or "
                                "divide by an expression that stays >= 1",
                            )
