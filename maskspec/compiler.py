"""Spec model → IR: resolve names, check primitives and their arguments, bind params, and
analyse every term once into its element meaning and its row program (``analysis``)."""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from maskspec import analysis, ir, primitives
from maskspec import model as m
from maskspec.errors import MaskSpecError, MaskSpecWarning, did_you_mean

MAX_NUMBER = ir.MAX_NUMBER

PRIMITIVE_HINTS = {
    "sliding_window": "write `window(left = N)`",
    "bidirectional": "write `full` (optionally with `where` guards)",
    "prefix": "write `full where kv < P` and union it with `causal`",
}


@dataclass
class _Scope:
    """What an expression may name where it stands."""

    vars: tuple[str, ...]
    inputs: bool
    what: str  # for messages: "an input shape", "a guard" ...


class _Resolver:
    def __init__(self, spec: m.Spec, params: Mapping[str, int]) -> None:
        self.spec = spec
        self.params = dict(params)
        self.inputs = {i.name: i for i in spec.inputs}
        self.lets = {d.name: d for d in spec.lets}
        self.members: dict[str, int] = {}  # a family's variable, in the member being resolved

    def error(self, msg: str, pos: m.Pos | None, hint: str | None = None) -> MaskSpecError:
        return MaskSpecError(msg, pos, source=self.spec.source, path=self.spec.path, hint=hint)

    def names(self, scope: _Scope) -> list[str]:
        out = [*scope.vars, *self.members, *ir.SIZES, *self.params, *self.lets]
        return out + (list(self.inputs) if scope.inputs else [])

    def fold(self, e: ir.Bin) -> ir.Expr:
        """An operation on two numbers as its value (``64 * 4`` is 256): keeps products of
        params constant factors, so the analysis cancels like terms (divisors are checked
        positive). A value past ±MAX_VALUE is refused: 64-bit arithmetic would wrap it."""
        if not (isinstance(e.a, ir.Const) and isinstance(e.b, ir.Const)):
            return e
        value = ir.BIN_OPS[e.op](e.a.value, e.b.value)
        if abs(value) > ir.MAX_VALUE:
            raise self.error(
                f"this constant is {value:.3g}, past the ±2**62 within which the mask's "
                "64-bit arithmetic is exact", e.pos, hint="use smaller factors",
            )
        return ir.Const(value, pos=e.pos)

    def positive(self, value: ir.Expr, pos: m.Pos, what: str) -> None:
        """Reject a divisor, period or chunk size known now to be < 1 (sizes are known later)."""
        if ir.is_constant(value) and not ir.uses(value, ir.Size):
            v = ir.const_value(value, {})
            if v < 1:
                raise self.error(f"{what} must be positive, got {v}", pos)

    def constant(self, e: m.Expr) -> ir.Expr:
        """A constant expression (numbers, params, sizes), as input shapes are."""
        return self.expr(e, CONST)

    def expr(self, e: m.Expr, scope: _Scope) -> ir.Expr:
        pos = e.pos
        if isinstance(e, m.Num):
            if e.value > MAX_NUMBER:
                raise self.error(f"numbers must be at most {MAX_NUMBER} (2**31 - 1)", pos)
            return ir.Const(e.value, pos=pos)
        if isinstance(e, m.Name):
            return self.name(e, scope)
        if isinstance(e, m.Index):
            return self.index(e, scope)
        if isinstance(e, m.Neg):
            return self.fold(ir.Bin("*", ir.Const(-1), self.number(e.operand, scope), pos=pos))
        if isinstance(e, m.BinOp):
            a, b = self.number(e.left, scope), self.number(e.right, scope)
            if e.op in ("//", "%") and not ir.is_constant(b):
                raise self.error(
                    f"`{e.op}` needs a constant divisor (numbers, params, sizes)", e.right.pos,
                    hint="divide by a param or Q_LEN/KV_LEN, not by q, kv or an input",
                )
            if e.op in ("//", "%"):
                self.positive(b, e.right.pos, f"the divisor of `{e.op}`")
            if e.op == "*" and not (ir.is_constant(a) or ir.is_constant(b)):
                raise self.error(
                    "a product needs one constant factor (the mask must stay affine)", pos,
                    hint="multiply by a number, a param or a size, e.g. `2 * q`",
                )
            if e.op in ("<<", ">>"):
                return self.shift(e, a, b)
            return self.fold(self.low_mask(ir.Bin(e.op, a, b, pos=pos)))
        args = [self.number(a, scope) for a in e.args]  # Func: min/max, left-folded
        out = args[0]
        for a in args[1:]:
            out = self.fold(ir.Bin(e.name, out, a, pos=pos))
        return out

    def shift(self, e: m.BinOp, a: ir.Expr, b: ir.Expr) -> ir.Expr:
        """``a << n`` and ``a >> n`` as ``a * 2**n`` and ``a // 2**n`` (the same integers,
        two's complement): a shift by a constant is then affine arithmetic to the analysis."""
        n = ir.const_value(b, {}) if ir.is_constant(b) and not ir.uses(b, ir.Size) else None
        if n is None or not 0 <= n <= 62:
            raise self.error(
                f"`{e.op}` shifts by a number of bits from 0 to 62", e.right.pos,
                hint="shift by a number or a param, e.g. `kv >> 1`",
            )
        op = "*" if e.op == "<<" else "//"
        return self.fold(ir.Bin(op, a, ir.Const(2 ** n), pos=e.pos))

    @staticmethod
    def low_mask(e: ir.Bin) -> ir.Expr:
        """``x & (2**n - 1)`` as ``x % 2**n`` (equal for every integer, negative ones too),
        which the analysis lowers exactly; other bit operations stay as they are."""
        for x, k in ((e.a, e.b), (e.b, e.a)):
            if e.op == "&" and isinstance(k, ir.Const) and k.value > 0 and (
                    k.value & (k.value + 1)) == 0 and not isinstance(x, ir.Const):
                return ir.Bin("%", x, ir.Const(k.value + 1), pos=e.pos)
        return e

    def number(self, e: m.Expr, scope: _Scope) -> ir.Expr:
        """An operand of arithmetic (or a primitive argument): never a bool input, whose
        sums would be logical ORs in torch (``True + True`` is ``True``)."""
        out = self.expr(e, scope)
        if isinstance(out, ir.Load) and self.inputs[out.input].dtype == "bool":
            raise self.error(
                f"input `{out.input}` is bool: it can be compared or used as a flag, not "
                "used as a number", e.pos,
                hint=f"declare it `int` to count with it, or compare it (`{out.input}[...] "
                "== 1`) in its own condition",
            )
        return out

    def name(self, e: m.Name, scope: _Scope) -> ir.Expr:
        if e.id in self.members:
            return ir.Const(self.members[e.id], pos=e.pos)
        if e.id in self.lets:
            return self.let(e, scope)
        if e.id in scope.vars:
            return ir.Var(e.id, pos=e.pos)
        if e.id in ir.SIZES:
            return ir.Size(e.id, pos=e.pos)
        if e.id in self.params:
            return ir.Const(self.params[e.id], pos=e.pos)
        if e.id in self.inputs and scope.inputs:
            n = len(self.inputs[e.id].shape)
            raise self.error(
                f"input `{e.id}` must be indexed", e.pos,
                hint=f"write `{e.id}[{', '.join(['b'] * n)}]` or whatever indices fit its shape",
            )
        if e.id in ir.VARS or e.id in self.inputs:
            raise self.error(f"`{e.id}` cannot be used in {scope.what}", e.pos)
        raise self.error(
            f"unknown name `{e.id}`", e.pos, hint=did_you_mean(e.id, self.names(scope))
        )

    def let(self, e: m.Name, scope: _Scope) -> ir.Expr:
        """A named expression: its body, resolved where it is used; an error inside it
        also says where that use is."""
        try:
            return self.expr(self.lets[e.id].value, scope)
        except MaskSpecError as err:
            use = f"`{e.id}` is used in {scope.what} at line {e.pos.line}, column {e.pos.column}"
            raise self.error(err.message, err.pos,
                             hint=use + (f"; {err.hint}" if err.hint else "")) from None

    def index(self, e: m.Index, scope: _Scope) -> ir.Expr:
        decl = self.inputs.get(e.id)
        if decl is None or not scope.inputs:
            if decl is not None:
                raise self.error(f"input `{e.id}` cannot be used in {scope.what}", e.pos)
            raise self.error(
                f"unknown input `{e.id}`", e.pos,
                hint=did_you_mean(e.id, list(self.inputs)) or "declare it with `input`",
            )
        if len(e.args) != len(decl.shape):
            raise self.error(
                f"input `{e.id}` has {len(decl.shape)} dimension(s) but is indexed with "
                f"{len(e.args)}", e.pos,
            )
        args = tuple(self.expr(a, scope) for a in e.args)
        return ir.Load(e.id, args, pos=e.pos)


CONST = _Scope(vars=(), inputs=False, what="a constant (param default, input shape)")
ROW_OR_KV = _Scope(vars=ir.VARS, inputs=True, what="a condition")
ARG = _Scope(vars=("b", "h", "q"), inputs=True, what="a primitive argument")
FAMILY_BOUND = _Scope(vars=("b", "h"), inputs=True, what="a family's bound")
CONST_ARG = _Scope(vars=(), inputs=False,
                   what="this argument, which must be constant (numbers, params, sizes)")


def _params(spec: m.Spec, overrides: Mapping[str, int]) -> dict[str, int]:
    known = [p.name for p in spec.params]
    for k in overrides:
        if k not in known:
            hint = did_you_mean(k, known)
            more = f"; {hint}" if hint else f" (params: {', '.join(known) or 'none'})"
            raise ValueError(f"spec `{spec.name}` has no param `{k}`{more}")
    values: dict[str, int] = {}
    for p in spec.params:
        if p.name in overrides:
            values[p.name] = _override(p.name, overrides[p.name])
            continue
        if p.default is None:
            raise MaskSpecError(
                f"param `{p.name}` has no default and no value was given", p.pos,
                source=spec.source, path=spec.path,
                hint=f"pass it: maskspec.load(path, {p.name}=...) in Python, "
                     f"--param {p.name}=... on the command line",
            )
        e = _Resolver(spec, values).expr(p.default, CONST)
        if not ir.is_constant(e) or any(isinstance(n, ir.Size) for n in e.walk()):
            raise MaskSpecError(
                f"the default of param `{p.name}` must be a number or earlier params",
                p.default.pos, source=spec.source, path=spec.path,
            )
        values[p.name] = ir.const_value(e, {})
    return values


def _override(name: str, value: object) -> int:
    """A param value given when loading: an integer within the literals' range."""
    try:
        v = operator.index(value)  # ints and integer scalars; not floats, not strings
    except TypeError:
        v = None
    if v is None or isinstance(value, bool):
        raise ValueError(f"param `{name}` must be an integer, got {value!r}")
    if abs(v) > MAX_NUMBER:
        raise ValueError(f"param `{name}` must lie in [-{MAX_NUMBER}, {MAX_NUMBER}], got {v}")
    return v


def _check_unique(spec: m.Spec) -> None:
    seen: dict[str, str] = {}
    reserved = set(ir.VARS) | set(ir.SIZES)
    decls = [("param", p) for p in spec.params] + [("input", i) for i in spec.inputs]
    decls += [("let", d) for d in spec.lets] + [("region", r) for r in spec.regions]
    for kind, d in decls:
        if d.name in reserved or d.name in primitives.registry():
            raise MaskSpecError(
                f"`{d.name}` is a built-in name and cannot name "
                f"{'an' if kind == 'input' else 'a'} {kind}", d.pos,
                source=spec.source, path=spec.path,
            )
        if d.name in seen:
            raise MaskSpecError(
                f"`{d.name}` is already declared as a {seen[d.name]}", d.pos,
                source=spec.source, path=spec.path,
            )
        seen[d.name] = kind


def _check_lets(spec: m.Spec) -> None:
    """A ``let`` may name only the lets before it: no use before the definition, no cycle."""
    order = {d.name: i for i, d in enumerate(spec.lets)}
    for i, d in enumerate(spec.lets):
        for n in _names(d.value):
            if order.get(n.id, -1) >= i:
                what = "itself" if n.id == d.name else f"`{n.id}`, defined after it"
                raise MaskSpecError(
                    f"let `{d.name}` uses {what}", n.pos, source=spec.source, path=spec.path,
                    hint="a let may use only the lets above it",
                )


def _names(e: m.Expr) -> list[m.Name]:
    """The names an expression of the spec model reads (its lookups' indices included)."""
    if isinstance(e, m.Name):
        return [e]
    return [n for k in e.children() for n in _names(k)]


def _argument(r: _Resolver, kind: primitives.PrimitiveKind, call: m.Call, i: int,
              a: m.Arg) -> str:
    """The name of the ``i``-th argument of ``call`` (positional or named), checked."""
    order = list(kind.params)
    if a.name is None:
        if i >= len(order) or any(x.name for x in call.args[:i]):
            raise r.error(
                f"`{call.name}` takes {len(order)} argument(s): {', '.join(order) or 'none'}",
                a.pos,
            )
        return order[i]
    if a.name not in kind.params:
        raise r.error(
            f"`{call.name}` has no argument `{a.name}`", a.pos,
            hint=did_you_mean(a.name, order) or f"arguments: {', '.join(order) or 'none'}",
        )
    return a.name


def _not_a_later_region(r: _Resolver, spec: m.Spec, reg: m.Region, call: m.Call) -> None:
    """A call naming this region or a later one (not a primitive) is refused as such."""
    names = [x.name for x in spec.regions]
    if call.name in names and primitives.get(call.name) is None:
        which = "itself" if call.name == reg.name else f"`{call.name}`, declared after it"
        raise r.error(
            f"region `{reg.name}` names {which}: a region may only name regions declared "
            "before it", call.pos, hint="move the region it names above it",
        )


def _primitive(r: _Resolver, call: m.Call) -> ir.Primitive:
    kind = primitives.get(call.name)
    if kind is None:
        names = list(primitives.registry())
        hint = PRIMITIVE_HINTS.get(call.name) or did_you_mean(call.name, names)
        raise r.error(f"unknown region primitive `{call.name}`", call.pos,
                      hint=hint or "primitives: " + ", ".join(names))
    bound = kind.bind(r, call)
    if bound is not None:
        return ir.Primitive(call.name, bound, pos=call.pos)
    given: dict[str, ir.Expr] = {}
    for i, a in enumerate(call.args):
        key = _argument(r, kind, call, i, a)
        if key in given:
            raise r.error(f"argument `{key}` given twice", a.pos)
        value = r.number(a.value, CONST_ARG if key in kind.constant else ARG)
        if key in kind.positive:
            r.positive(value, a.value.pos, f"the {key} of `{call.name}`")
        given[key] = value
    for key, default in kind.params.items():
        if key in given:
            continue
        if default is None:
            raise r.error(f"`{call.name}` needs argument `{key}`", call.pos,
                          hint=f"e.g. `{call.name}({key} = ...)`")
        given[key] = given[default] if isinstance(default, str) else ir.Const(default)
    return ir.Primitive(call.name, given, pos=call.pos)


def _bool_read(r: _Resolver, e: ir.Expr) -> bool:
    return isinstance(e, ir.Load) and r.inputs[e.input].dtype == "bool"


def _cond(r: _Resolver, c: m.Cond) -> ir.Cmp:
    side = r.expr if c.op in ("==", "!=") else r.number  # bools are equal or not, not ordered
    cmp = ir.Cmp(c.op, side(c.left, ROW_OR_KV), side(c.right, ROW_OR_KV), pos=c.pos)
    for a, b in ((cmp.left, cmp.right), (cmp.right, cmp.left)):
        flag = isinstance(b, ir.Const) and b.value in (0, 1)
        if _bool_read(r, a) and not (flag or _bool_read(r, b)):
            raise r.error(
                f"input `{a.input}` is bool: it equals 0, 1 or another bool input, not a "
                "number", c.pos, hint=f"declare it `int` to compare it with numbers, or write "
                f"`{a.input}[...] == 1` in its own condition")
    return cmp


MAX_CONSTANT_ENTRIES = 2**24  # entries an input may declare with constant dimensions alone


def _input(r: _Resolver, d: m.Input) -> ir.InputDecl:
    shape = tuple(r.expr(s, CONST) for s in d.shape)
    for e, src in zip(shape, d.shape, strict=True):
        r.positive(e, src.pos, f"a dimension of input `{d.name}`")
    fixed = math.prod(e.value for e in shape if isinstance(e, ir.Const))
    if fixed > MAX_CONSTANT_ENTRIES:
        raise r.error(
            f"input `{d.name}` declares {fixed} entries by constants alone (at most "
            f"{MAX_CONSTANT_ENTRIES}): its default would be allocated at every build", d.pos,
            hint="size inputs by the sizes they are indexed with, e.g. `int[B, Q_LEN]`",
        )
    if d.range is not None and d.dtype == "bool":
        raise r.error(f"input `{d.name}` is bool: it takes no range", d.range[0].pos,
                      hint="declare it `int` to give it a range")
    rng = None if d.range is None else (r.expr(d.range[0], CONST), r.expr(d.range[1], CONST))
    default = None if d.default is None else r.expr(d.default, CONST)
    if rng is not None:
        _check_range(r, d, rng, default)
    return ir.InputDecl(d.name, d.dtype, shape, rng, default, pos=d.pos)


def _check_range(r: _Resolver, d: m.Input, rng: tuple[ir.Expr, ir.Expr],
                 default: ir.Expr | None) -> None:
    """A range known now must hold a value, and a default known now must lie in it."""
    lo, hi = (e.value if isinstance(e, ir.Const) else None for e in rng)
    if lo is not None and hi is not None and lo > hi:
        raise r.error(f"the range of input `{d.name}` is empty: [{lo}, {hi}]", d.range[0].pos,
                      hint="give the smallest value first")
    if isinstance(default, ir.Const) and (
            (lo is not None and default.value < lo) or (hi is not None and default.value > hi)):
        raise r.error(
            f"the default of input `{d.name}`, {default.value}, lies outside its own range",
            d.default.pos, hint="pick a default inside the declared range",
        )


def _parts(t: tuple[tuple[ir.Primitive, ...], tuple[ir.Cmp, ...]]) -> tuple[
        list[ir.Cmp], list[analysis.Part], tuple[ir.Residual, ...]]:
    """A term's guards, the clips and levels of its primitives and of its kv conditions with
    an interval form, and its residual: the conditions without one."""
    prims, conds = t
    parts: list[analysis.Part] = []
    for p in prims:
        parts += primitives.registry()[p.kind].lower(dict(p.args))
    guards, rest = [], []
    for c in conds:
        f = analysis.cond_form(c)
        if isinstance(f, ir.Residual):
            rest.append(f)
        elif isinstance(f, analysis.RowCond):
            guards.append(f.cmp)
        else:
            parts.append(analysis.cond_part(f))
    return guards, parts, tuple(rest)


def _term(name: str, prims: tuple[ir.Primitive, ...], where: tuple[ir.Cmp, ...],
          valid: tuple[ir.Cmp, ...], program: ir.RowProgram, rest: tuple[ir.Residual, ...],
          pos: m.Pos | None) -> ir.Term:
    meaning = tuple(c for p in prims for c in primitives.registry()[p.kind].meaning(dict(p.args)))
    transposed = analysis.transposed(meaning + where + valid) if rest else None
    return ir.Term(name, prims, where, valid, meaning, program, pos=pos, residual=rest,
                   transposed=transposed)


def compile_spec(spec: m.Spec, strict: bool = False, **params: int) -> ir.MaskIR:
    """Resolve a parsed spec into the IR, binding ``params`` (overriding defaults).
    ``strict`` refuses a spec whose blocks need the element fallback (``refuse_fallback``)."""
    _check_unique(spec)
    _check_lets(spec)
    r = _Resolver(spec, _params(spec, params))
    inputs = tuple(_input(r, d) for d in spec.inputs)
    valid = tuple(_cond(r, c) for v in spec.valid for c in v.conds)
    members = _unwrap(_regions(r, spec, inputs), valid)
    _check_term_names(r, members)
    analysed = [_parts((prims, where + valid)) for _, _, prims, where in members]
    keep = analysis.family_term([parts for _, parts, _ in analysed])
    terms = tuple(
        _term(name, prims, where, valid, analysis.program(g, parts, i == keep), rest, pos)
        for i, ((name, pos, prims, where), (g, parts, rest))
        in enumerate(zip(members, analysed, strict=True))
    )
    sorted_inputs = tuple(dict.fromkeys(
        n for t in terms for p in t.prims
        for n in primitives.registry()[p.kind].sorted_inputs(dict(p.args))))
    _warn_empty(r, terms)
    out = ir.MaskIR(spec.name, terms, inputs, r.params, spec.source, spec.path, sorted_inputs)
    if strict:
        refuse_fallback(out)
    return out


_Region = tuple[tuple[ir.Primitive, ...], tuple[ir.Cmp, ...]]  # primitives, conditions


def _regions(r: _Resolver, spec: m.Spec, inputs: tuple[ir.InputDecl, ...]) -> list[
        tuple[str, m.Pos, tuple[ir.Primitive, ...], tuple[ir.Cmp, ...]]]:
    """Every region resolved, a family unrolled into its members (named ``r_i``)."""
    named: dict[str, _Region] = {}
    families: set[str] = set()
    out = []
    for reg in spec.regions:
        for k, guard in _members(r, reg, inputs):
            r.members = {} if k is None else {reg.family.var: k}
            prims, where = _region(r, spec, reg, named, families)
            out.append((reg.name if k is None else _member_name(r, spec, reg, k), reg.pos,
                        prims, where + guard))
            if k is None:
                named[reg.name] = (prims, where)
        r.members = {}
        if reg.family is not None:
            families.add(reg.name)
    return out


def _member_name(r: _Resolver, spec: m.Spec, reg: m.Region, k: int) -> str:
    """A family member's name, ``r_3``: an identifier, as every target's term names are."""
    name = f"{reg.name}_{k}" if k >= 0 else f"{reg.name}_neg{-k}"
    if any(x.name == name for x in spec.regions):
        raise r.error(f"member {k} of family `{reg.name}` would be named `{name}`, which a "
                      "region already is", reg.family.pos, hint="rename that region")
    return name


def _region(r: _Resolver, spec: m.Spec, reg: m.Region, named: dict[str, _Region],
            families: set[str]) -> _Region:
    """A region's primitives and conditions, regions it names by name expanded."""
    prims: tuple[ir.Primitive, ...] = ()
    where = tuple(_cond(r, c) for c in reg.where)
    for c in reg.calls:
        if c.name in families and not c.args:
            raise r.error(
                f"region `{c.name}` is a family: a region cannot be intersected with it by "
                "name", c.pos, hint=f"make this region a family too, or write `{c.name}`'s "
                "primitives and conditions here")
        if c.name in named and not c.args:  # an earlier region: intersect with it
            prims, where = prims + named[c.name][0], where + named[c.name][1]
        else:
            _not_a_later_region(r, spec, reg, c)
            prims += (_primitive(r, c),)
    return prims, where


MAX_WRAPS = 3  # wrapping windows one region may split on (2**3 terms)
MAX_SPLIT_PIECES = 64  # pieces per row (at NOMINAL sizes) a split half may enumerate


def _unwrap(members: list, valid: tuple[ir.Cmp, ...]) -> list:
    """A region with windows of ``(kv + c) % P`` that may wrap around the period, split into
    the terms of their non-wrapping halves (``analysis.unwrapped``), named ``r_wrap0`` …:
    the same keys, each half analytic. Only where that is cheap: the halves' levels are
    enumerated piece by piece (one term of a mask keeps a strided family), so a split whose
    halves would enumerate more than MAX_SPLIT_PIECES pieces per row (a fine period over
    long rows), or past MAX_WRAPS such conditions, keeps the condition for the element
    fallback instead, whose cost is bounded by the blocks it decides."""
    out = []
    for name, pos, prims, where in members:
        variants: list[tuple[ir.Cmp, ...]] = [()]
        for c in where:
            halves = analysis.unwrapped(c) if len(variants) < 2 ** MAX_WRAPS else None
            variants = [v + h for v in variants for h in (halves or ((c,),))]
        if len(variants) > 1 and max(analysis.enumeration_cost(_parts((prims, v + valid))[1])
                                     for v in variants) > MAX_SPLIT_PIECES:
            variants = [where]
        if len(variants) == 1:
            out.append((name, pos, prims, variants[0]))
        else:
            out += [(f"{name}_wrap{j}", pos, prims, v) for j, v in enumerate(variants)]
    return out


def _check_term_names(r: _Resolver, members: list) -> None:
    """Every term's name is its own: targets name variables after them."""
    seen: set[str] = set()
    for name, pos, _, _ in members:
        if name in seen:
            raise r.error(f"two regions would both be named `{name}` (a family member or a "
                          "split wrapping window takes its region's name with a suffix)", pos,
                          hint="rename the region that already has that name")
        seen.add(name)


MAX_MEMBERS = 256  # regions one family may unroll to


def _members(r: _Resolver, reg: m.Region, inputs: tuple[ir.InputDecl, ...]) -> list[
        tuple[int | None, tuple[ir.Cmp, ...]]]:
    """The members of a region family ``[i in lo .. hi)``, each with its guards: every i
    from lo up to hi's largest value, guarded by ``i < hi`` when hi reads inputs (their
    declared ranges bound it, so the regions unroll once, when the spec compiles). A plain
    region is one member, None."""
    fam = reg.family
    if fam is None:
        return [(None, ())]
    _check_family_var(r, fam)
    lo = _known(r.constant(fam.lo))
    if lo is None:
        raise r.error("a family starts at a number or a param", fam.lo.pos,
                      hint="write e.g. `[i in 0 .. n)`")
    hi = r.expr(fam.hi, FAMILY_BOUND)
    known = _known(hi)
    top = _largest(r, fam, hi, inputs) if known is None else known
    if top - lo > MAX_MEMBERS:
        raise r.error(f"family `{reg.name}` has {top - lo} members, more than {MAX_MEMBERS}",
                      fam.pos, hint="a family unrolls into one region per member; bound it "
                      "tighter, or write the mask with `//` and `%` on kv")
    if top <= lo:
        raise r.error(f"family `{reg.name}` has no member: [{lo}, {top}) is empty", fam.pos,
                      hint="its bound must exceed its start")
    return [(k, () if known is not None else (ir.Cmp("<", ir.Const(k), hi, pos=fam.hi.pos),))
            for k in range(lo, top)]


def _largest(r: _Resolver, fam: m.Family, hi: ir.Expr,
             inputs: tuple[ir.InputDecl, ...]) -> int:
    """The bound of a family that reads inputs: the largest value of hi, from the inputs'
    declared ranges (it must be a number once params are bound)."""
    why = "reads Q_LEN or KV_LEN" if ir.uses(hi, ir.Size) else None
    known = {d.name: (_known(d.range[0]), _known(d.range[1])) for d in inputs
             if d.range is not None}
    ranges = {name: rng for name, rng in known.items() if None not in rng}
    top = ir.bounds(hi, {}, {}, ranges)[1] if why is None else math.inf
    if math.isinf(top):
        why = why or "reads an input with no range of numbers"
        raise r.error(
            f"a family's bound must have a largest value when the spec compiles; this one "
            f"{why}", fam.hi.pos, hint="bound it by a param, or by an input with a declared "
            "range of numbers or params (`n: int[B] in [0, 8]`, then `[i in 0 .. n[b])`)")
    return int(top)


def _check_family_var(r: _Resolver, fam: m.Family) -> None:
    taken = {**{n: "param" for n in r.params}, **{n: "input" for n in r.inputs},
             **{n: "let" for n in r.lets}}
    if fam.var in ir.VARS or fam.var in ir.SIZES or fam.var in primitives.registry():
        raise r.error(f"`{fam.var}` is a built-in name and cannot name a family's variable",
                      fam.pos, hint="name it e.g. `i`")
    if fam.var in taken:
        raise r.error(f"`{fam.var}` is already declared as a {taken[fam.var]}", fam.pos,
                      hint="name the family's variable otherwise, e.g. `i`")


def refuse_fallback(mask: ir.MaskIR) -> None:
    """A located MaskSpecError at the first condition with no interval form: what a strict
    compile says of a spec whose blocks the element fallback would decide."""
    for t, res in mask.residuals():
        raise MaskSpecError(
            f"region `{t.name}` needs the element fallback: {res.why}", res.pos,
            source=mask.source, path=mask.path,
            hint="without strict, maskspec decides the blocks this condition touches by "
            "evaluating the mask on them (exact, at the cost of those blocks' elements)",
        )


def _known(e: ir.Expr) -> int | None:
    """The value of an expression of numbers alone (no variables, sizes or inputs)."""
    if not ir.is_constant(e) or ir.uses(e, ir.Size):
        return None
    return ir.const_value(e, {})


def _empty(t: ir.Term) -> bool:
    """Whether the term allows nothing at any sizes: a guard false by numbers alone, a width
    of its key clip or a level's length at most 0."""
    p = t.program
    for c in p.guards:
        a, b = _known(c.left), _known(c.right)
        if a is not None and b is not None and not ir.CMP_OPS[c.op](a, b):
            return True
    lengths = [lv.length for lv in (*p.loops, *((p.family,) if p.family else ()))]
    return any((v := _known(e)) is not None and v <= 0 for e in (*p.widths, *lengths))


def _warn_empty(r: _Resolver, terms: tuple[ir.Term, ...]) -> None:
    """A MaskSpecWarning for each region that allows nothing, and for a mask that does."""
    empty = [t for t in terms if _empty(t)]
    for t in empty:
        warnings.warn(MaskSpecWarning(
            f"region `{t.name}` allows no (q, kv) pair at any size", t.pos,
            source=r.spec.source, path=r.spec.path,
            hint="check its arguments' signs and its conditions"), stacklevel=4)
    if empty and len(empty) == len(terms):
        warnings.warn(MaskSpecWarning(
            "the mask allows no (q, kv) pair at any size: attention would see nothing", None,
            source=r.spec.source, path=r.spec.path), stacklevel=4)
