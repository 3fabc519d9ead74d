"""``ir.simplified``: row programs' expressions folded and rewritten, equal everywhere."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import maskspec
from maskspec import ir

ATOMS = [ir.Var("q"), ir.Var("kv"), ir.Var("b"), ir.Size("Q_LEN"), ir.Size("KV_LEN")]
OPS = ["+", "-", "*", "//", "%", "min", "max"]


def _divisor() -> st.SearchStrategy[ir.Expr]:
    """Divisors as the language allows them: positive constants and sizes."""
    return st.one_of(st.integers(1, 9).map(ir.Const), st.sampled_from(ATOMS[3:]))


def _leaf() -> st.SearchStrategy[ir.Expr]:
    return st.one_of(st.sampled_from(ATOMS), st.integers(-3, 3).map(ir.Const))


def _node(children: st.SearchStrategy[ir.Expr]) -> st.SearchStrategy[ir.Expr]:
    plain = st.builds(ir.Bin, st.sampled_from([o for o in OPS if o not in ("//", "%")]),
                      children, children)
    div = st.builds(ir.Bin, st.sampled_from(["//", "%"]), children, _divisor())
    at_zero = st.builds(lambda a, op: ir.Bin(op, a, ir.Const(0)), children,
                        st.sampled_from(["max", "min"]))  # the clamps solving leaves
    return st.one_of(plain, div, at_zero)


EXPRS = st.recursive(_leaf(), _node, max_leaves=12)


def _value(e: ir.Expr, q: int, kv: int, b: int, q_len: int, kv_len: int) -> int:
    env = ir.Env({"q": q, "kv": kv, "b": b, "h": 0}, {"Q_LEN": q_len, "KV_LEN": kv_len})
    return int(ir.evaluate(e, env))


@settings(max_examples=400, deadline=None)
@given(EXPRS, st.integers(-50, 50), st.integers(-50, 50), st.integers(0, 3),
       st.integers(1, 40), st.integers(1, 40))
def test_simplified_expressions_equal_the_originals(e, q, kv, b, q_len, kv_len):
    s = ir.simplified(e)
    assert _value(s, q, kv, b, q_len, kv_len) == _value(e, q, kv, b, q_len, kv_len)
    assert sum(1 for _ in s.walk()) <= sum(1 for _ in e.walk())


def test_what_simplification_removes():
    q, n = ir.Var("q"), ir.Size("Q_LEN")
    assert ir.simplified(ir.Bin("*", ir.Const(-1), ir.Bin("-", ir.Const(0), n))) == n
    assert ir.simplified(ir.Bin("max", ir.Bin("%", q, n), ir.Const(0))) == ir.Bin("%", q, n)
    assert ir.simplified(ir.Bin("min", q, q)) == q
    assert ir.simplified(ir.Bin("max", ir.Const(2), ir.Const(5))) == ir.Const(5)
    # a remainder by a negative constant can be negative: max(·, 0) stays
    neg = ir.Bin("max", ir.Bin("%", q, ir.Const(-3)), ir.Const(0))
    assert ir.simplified(neg) == neg
    # an input's declared range is not assumed: max(seq_len[b], 0) stays
    load = ir.Bin("max", ir.Load("seq_len", (ir.Var("b"),)), ir.Const(0))
    assert ir.simplified(load) == load


def test_row_programs_are_simplified():
    """EAGLE-3's draft rounds start at Q_LEN, not at -1 · (0 - Q_LEN)."""
    drafts = maskspec.load("eagle3").ir.terms[1].program
    assert drafts.lows == (ir.Size("Q_LEN"),)
    assert drafts.family is not None and drafts.family.phase == ir.Bin(
        "%", ir.Var("q"), ir.Size("Q_LEN"))


def test_simplified_programs_build_the_same_blocks(monkeypatch):
    """Shipped specs build equal BlockMasks from their programs compiled unsimplified."""
    from maskspec import analysis
    from maskspec.api import shipped_specs
    from maskspec.verify import first_difference

    names = ("eagle3", "dilated_sliding_window", "natten", "sta_3d", "svg_temporal")
    built = {n: maskspec.load(n).block_mask(1, 1, 1000, 3000, "cpu", 64) for n in names}
    simple = [t.program for t in maskspec.load("eagle3").ir.terms]
    monkeypatch.setattr(analysis.ir, "simplified", lambda e: e)
    programs = {}
    for n in names:
        plain = maskspec.compile(shipped_specs()[n].read_text())
        assert first_difference(plain.block_mask(1, 1, 1000, 3000, "cpu", 64), built[n]) is None
        programs[n] = [t.program for t in plain.ir.terms]
    assert programs["eagle3"] != simple
