"""Hypothesis strategies shared by the test modules: random valid specs written from the
grammar (with the params and inputs they declare) and random small shapes with block sizes."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

# ---------------------------------------------------------------- valid specs


@dataclass
class Ctx:
    """What a generated expression may name."""

    params: dict[str, int]
    seq_len: bool


def _offset(draw: st.DrawFn, base: str) -> str:
    """``base`` shifted by a small random constant."""
    c = draw(st.integers(-20, 20))
    return base if c == 0 else f"{base} + {c}" if c > 0 else f"{base} - {-c}"


def _row_bases(ctx: Ctx) -> list[str]:
    """Expressions of the row a key bound is taken from: q, sizes, params, the input."""
    bases = ["q", "q", "q", "2 * q", "q // 2", "Q_LEN - q", "KV_LEN - Q_LEN + q", "Q_LEN // 2",
             "KV_LEN // 3", "q % 5", "b", "h"]
    bases += list(ctx.params)
    return bases + (["seq_len[b]", "seq_len[b]"] if ctx.seq_len else [])


@st.composite
def positive(draw: st.DrawFn, ctx: Ctx) -> str:
    """A build-time constant ≥ 1: a period, chunk size or divisor."""
    options = [str(draw(st.integers(1, 40))), "Q_LEN", "KV_LEN", "Q_LEN // 2 + 1",
               "(KV_LEN + 3) // 4"]
    options += [f"{p} + 1" for p in ctx.params]
    return draw(st.sampled_from(options))


@st.composite
def constant(draw: st.DrawFn, ctx: Ctx) -> str:
    """A build-time constant of either sign: an offset."""
    options = [str(draw(st.integers(-30, 30))), "Q_LEN", "-Q_LEN", "KV_LEN - Q_LEN", "Q_LEN // 3"]
    options += list(ctx.params) + [f"-{p}" for p in ctx.params]
    return draw(st.sampled_from(options))


@st.composite
def row_value(draw: st.DrawFn, ctx: Ctx) -> str:
    """A value that may vary with the row: a window width or a causal offset."""
    if draw(st.integers(0, 3)):
        return draw(constant(ctx))
    return draw(st.sampled_from(["q // 4", "q % 7", "Q_LEN - q", "b + 2"]
                                + (["seq_len[b] // 2"] if ctx.seq_len else [])))


def _call(draw: st.DrawFn, name: str, args: list[tuple[str, str]]) -> str:
    """`name(a, key = b)`: a random number of leading arguments positionally."""
    if not args:
        return name
    n_pos = draw(st.integers(0, len(args)))
    parts = [v if i < n_pos else f"{k} = {v}" for i, (k, v) in enumerate(args)]
    return f"{name}({', '.join(parts)})"


@st.composite
def primitive(draw: st.DrawFn, ctx: Ctx) -> str:
    kind = draw(st.sampled_from(["full", "causal", "window", "diagonal", "chunk"]))
    args: list[tuple[str, str]] = []
    if kind == "causal" and draw(st.booleans()):
        args = [("offset", draw(row_value(ctx)))]
    elif kind == "window":
        args = [("left", draw(row_value(ctx)))]
        args += [("right", draw(row_value(ctx)))] if draw(st.booleans()) else []
    elif kind in ("diagonal", "chunk"):
        first = "period" if kind == "diagonal" else "size"
        args = [(first, draw(positive(ctx)))]
        args += [("offset", draw(constant(ctx)))] if draw(st.booleans()) else []
    return _call(draw, kind, args)


@st.composite
def guard(draw: st.DrawFn, ctx: Ctx) -> str:
    """An affine comparison: c·atom (atom = kv, kv % N or kv // N) against a row expression."""
    ops = ["<", "<=", ">", ">=", "=="]
    kind = draw(st.sampled_from(["kv"] * 5 + ["mod", "div", "row", "row"]))
    if kind == "row":  # no kv: keeps or drops whole rows
        lhs = draw(st.sampled_from(["q", "q", "b", "h", "q % 3", "2 * q"]))
        op = draw(st.sampled_from([*ops, "!="]))
        return f"{lhs} {op} {_offset(draw, draw(st.sampled_from(_row_bases(ctx))))}"
    rhs = _offset(draw, draw(st.sampled_from(_row_bases(ctx))))
    if kind == "kv":
        atom = "kv"
    else:
        n = draw(positive(ctx))
        atom = f"(kv {'%' if kind == 'mod' else '//'} ({n}))"
        if draw(st.booleans()):  # compare like with like: kv // N against q // N ...
            rhs = _offset(draw, f"q {'%' if kind == 'mod' else '//'} ({n})")
    coef = draw(st.sampled_from([1] * 6 + [2, 3, -1, -2]))
    if coef != 1:
        atom = f"-{atom}" if coef == -1 else f"{coef} * {atom}"
        rhs = f"{coef} * ({rhs})" if draw(st.booleans()) else rhs
    op = draw(st.sampled_from(ops))
    if draw(st.booleans()):
        return f"{atom} {op} {rhs}"
    flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}[op]
    return f"{rhs} {flipped} {atom}"


def _conds(draw: st.DrawFn, ctx: Ctx, most: int) -> str:
    return " and ".join(draw(st.lists(guard(ctx), min_size=1, max_size=most)))


PADDING = ["q < seq_len[b]", "kv < seq_len[b]", "q < seq_len[b] and kv < seq_len[b]",
           "q < seq_len[b] and kv % Q_LEN < seq_len[b]"]


@st.composite
def valid_specs(draw: st.DrawFn) -> tuple[str, dict[str, int]]:
    """Spec text from the language's constructs, and the params to load it with."""
    params = {f"p{i}": draw(st.integers(0, 40)) for i in range(draw(st.integers(0, 2)))}
    ctx = Ctx(params, draw(st.booleans()))
    lines = ["mask fuzz"]
    load: dict[str, int] = {}
    for name, value in params.items():
        how = draw(st.sampled_from(["default", "override", "required"]))
        lines.append(f"param {name}: int" + ("" if how == "required" else f" = {value}"))
        if how != "default":
            load[name] = value
            if how == "override":
                lines[-1] = f"param {name}: int = {draw(st.integers(0, 40))}"
    if ctx.seq_len:
        lines.append("input seq_len: int[B] in [0, Q_LEN] = Q_LEN")
    for i in range(draw(st.integers(1, 3))):
        calls = " & ".join(draw(st.lists(primitive(ctx), min_size=1, max_size=2)))
        where = f" where {_conds(draw, ctx, 2)}" if draw(st.integers(0, 2)) == 0 else ""
        lines.append(f"region r{i} = {calls}{where}")
    if ctx.seq_len and draw(st.booleans()):  # padding, as eagle3 writes it
        lines.append(f"valid {draw(st.sampled_from(PADDING))}")
    if draw(st.integers(0, 2)) == 0:
        lines.append(f"valid {_conds(draw, ctx, 1)}")
    return "\n".join(lines) + "\n", load


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int, int, int, tuple[int, int]]:
    q_bs = draw(st.integers(8, 64))
    kv_bs = q_bs if draw(st.booleans()) else draw(st.integers(8, 64))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 200)),
            draw(st.integers(1, 200)), (q_bs, kv_bs))
