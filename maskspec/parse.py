"""Source text → spec model: the lark grammar, and one Transformer that builds the model."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from lark import (
    Lark,
    Token,
    Transformer,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    v_args,
)
from lark.tree import Meta

from maskspec import model as m
from maskspec.errors import MaskSpecError

KEYWORDS = ("mask", "param", "input", "region", "valid", "where", "and", "in", "int", "bool")


@functools.cache
def _parser() -> Lark:
    grammar = resources.files("maskspec.grammars").joinpath("maskspec.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _pos(meta: Meta | Token) -> m.Pos:
    return m.Pos(
        line=meta.line,
        column=meta.column,
        end_line=meta.end_line,
        end_column=meta.end_column,
    )


@v_args(meta=True)
class _ToModel(Transformer):
    """Builds spec-model nodes bottom-up; every node keeps its source span."""

    def __init__(self, source: str, path: str) -> None:
        super().__init__(visit_tokens=False)
        self.source, self.path = source, path

    def _binop(self, op: str, meta: Meta, children: list) -> m.BinOp:
        return m.BinOp(pos=_pos(meta), op=op, left=children[0], right=children[1])

    def num(self, meta: Meta, c: list) -> m.Num:
        return m.Num(pos=_pos(meta), value=int(c[0]))

    def name(self, meta: Meta, c: list) -> m.Name:
        return m.Name(pos=_pos(meta), id=str(c[0]))

    def index(self, meta: Meta, c: list) -> m.Index:
        return m.Index(pos=_pos(meta), id=str(c[0]), args=c[1:])

    def func(self, meta: Meta, c: list) -> m.Func:
        return m.Func(pos=_pos(meta), name=str(c[0]), args=c[1:])

    def neg(self, meta: Meta, c: list) -> m.Neg:
        return m.Neg(pos=_pos(meta), operand=c[0])

    def add(self, meta: Meta, c: list) -> m.BinOp:
        return self._binop("+", meta, c)

    def sub(self, meta: Meta, c: list) -> m.BinOp:
        return self._binop("-", meta, c)

    def mul(self, meta: Meta, c: list) -> m.BinOp:
        return self._binop("*", meta, c)

    def floordiv(self, meta: Meta, c: list) -> m.BinOp:
        return self._binop("//", meta, c)

    def mod(self, meta: Meta, c: list) -> m.BinOp:
        return self._binop("%", meta, c)

    def cond(self, meta: Meta, c: list) -> m.Cond:
        return m.Cond(pos=_pos(meta), left=c[0], op=str(c[1]), right=c[2])

    def conds(self, meta: Meta, c: list) -> list[m.Cond]:
        return c

    def arg(self, meta: Meta, c: list) -> m.Arg:
        return m.Arg(pos=_pos(meta), name=None if c[0] is None else str(c[0]), value=c[1])

    def call(self, meta: Meta, c: list) -> m.Call:
        args = [a for a in c[1:] if a is not None]
        return m.Call(pos=_pos(meta), name=str(c[0]), args=args)

    def param(self, meta: Meta, c: list) -> m.Param:
        return m.Param(pos=_pos(meta), name=str(c[0]), default=c[1])

    def input(self, meta: Meta, c: list) -> m.Input:
        *shape, bounds, default = c[2:]
        return m.Input(
            pos=_pos(meta),
            name=str(c[0]),
            dtype=str(c[1]),
            shape=shape,
            range=bounds,
            default=default,
        )

    def range(self, meta: Meta, c: list) -> tuple:
        return (c[0], c[1])

    def region(self, meta: Meta, c: list) -> m.Region:
        *calls, where = c[1:]
        return m.Region(pos=_pos(meta), name=str(c[0]), calls=calls, where=where or [])

    def valid(self, meta: Meta, c: list) -> m.Valid:
        return m.Valid(pos=_pos(meta), conds=c[0])

    def start(self, meta: Meta, c: list) -> m.Spec:
        decls = c[1:]
        kinds = {m.Param: "params", m.Input: "inputs", m.Region: "regions", m.Valid: "valid"}
        fields: dict[str, list] = {v: [] for v in kinds.values()}
        for d in decls:
            fields[kinds[type(d)]].append(d)
        return m.Spec(
            name=str(c[0]), pos=_pos(meta), source=self.source, path=self.path, **fields
        )


def _syntax_error(err: UnexpectedInput, source: str, path: str) -> MaskSpecError:
    line, col = max(err.line, 1), max(err.column, 1)
    if isinstance(err, UnexpectedEOF):
        lines = source.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
        msg, hint = "unexpected end of spec", "a declaration or expression is unfinished"
    elif isinstance(err, UnexpectedCharacters):
        msg, hint = f"unexpected character {source[err.pos_in_stream]!r}", None
    else:
        tok = err.token  # type: ignore[attr-defined]
        shown = str(tok) if tok.type != "$END" else "end of spec"
        msg = f"unexpected {shown!r}"
        if tok.type == "NAME" and str(tok) in KEYWORDS:
            msg += f" (`{tok}` is a keyword)"
        expected = sorted(err.expected) if getattr(err, "expected", None) else []  # type: ignore[attr-defined]
        hint = "expected one of: " + ", ".join(expected[:8]) if expected else None
    pos = m.Pos(line=line, column=col, end_line=line, end_column=col + 1)
    return MaskSpecError(f"syntax error: {msg}", pos, source=source, path=path, hint=hint)


def parse(source: str, path: str = "<spec>") -> m.Spec:
    """Parse spec text into the validated spec model; raise MaskSpecError on bad syntax."""
    try:
        tree = _parser().parse(source)
    except UnexpectedInput as err:
        raise _syntax_error(err, source, path) from None
    return _ToModel(source, path).transform(tree)


def parse_file(path: str | Path) -> m.Spec:
    """Read and parse a `.mask` file."""
    p = Path(path)
    return parse(p.read_text(), str(p))
