"""Source text → spec model: the lark grammar, and one Transformer that builds the model."""

from __future__ import annotations

import functools
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from lark import (
    Lark,
    Token,
    Transformer,
    Tree,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    v_args,
)
from lark.exceptions import VisitError
from lark.tree import Meta

from maskspec import model as m
from maskspec.errors import MaskSpecError

KEYWORDS = (
    "mask", "param", "input", "let", "region", "valid", "where", "and", "in", "int", "bool", "min",
    "max",
)


def data_dir(name: str) -> Traversable:
    """An installed data package (maskspec.grammars, maskspec.specs), or the checkout's folder."""
    try:
        return resources.files(f"maskspec.{name}")
    except ModuleNotFoundError:  # running from a source tree that was never installed
        return resources.files("maskspec").joinpath("..", name)


@functools.cache
def _parser() -> Lark:
    grammar = data_dir("grammars").joinpath("maskspec.lark").read_text()
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
        return m.Num(pos=_pos(meta), value=int(c[0], 0))  # decimal or 0x hexadecimal

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

    def bitand(self, meta: Meta, c: list) -> m.BinOp:
        return self._binop("&", meta, c)

    def bitor(self, meta: Meta, c: list) -> m.BinOp:
        return self._binop("|", meta, c)

    def bitxor(self, meta: Meta, c: list) -> m.BinOp:
        return self._binop("^", meta, c)

    def shl(self, meta: Meta, c: list) -> m.BinOp:
        return self._binop("<<", meta, [c[0], c[2]])  # c[1]: the operator token

    def shr(self, meta: Meta, c: list) -> m.BinOp:
        return self._binop(">>", meta, [c[0], c[2]])

    def cond(self, meta: Meta, c: list) -> m.Cond:
        if len(c) == 1:  # a bare flag such as `keep[b, q // block]` means `!= 0`
            zero = m.Num(pos=c[0].pos, value=0)
            return m.Cond(pos=_pos(meta), left=c[0], op="!=", right=zero, flag=True)
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
        family, *calls, where = c[1:]
        return m.Region(pos=_pos(meta), name=str(c[0]), calls=calls, where=where or [],
                        family=family)

    def family(self, meta: Meta, c: list) -> m.Family:
        return m.Family(pos=_pos(meta), var=str(c[0]), lo=c[1], hi=c[2])

    def let(self, meta: Meta, c: list) -> m.Let:
        return m.Let(pos=_pos(meta), name=str(c[0]), value=c[1])

    def valid(self, meta: Meta, c: list) -> m.Valid:
        return m.Valid(pos=_pos(meta), conds=c[0])

    def start(self, meta: Meta, c: list) -> m.Spec:
        decls = c[1:]
        kinds = {m.Param: "params", m.Input: "inputs", m.Let: "lets", m.Region: "regions",
                 m.Valid: "valid"}
        fields: dict[str, list] = {v: [] for v in kinds.values()}
        for d in decls:
            fields[kinds[type(d)]].append(d)
        if not fields["regions"]:
            raise MaskSpecError(
                f"mask `{c[0]}` declares no region, so it allows nothing", _pos(meta),
                source=self.source, path=self.path, hint="add one, e.g. `region all = causal`",
            )
        return m.Spec(
            name=str(c[0]), pos=_pos(meta), source=self.source, path=self.path, **fields
        )


# How lark's terminals read to a person; literal ones (LPAR, COMMA ...) show their text.
_WORDS = {
    "NAME": "a name",
    "INT": "a number",
    "CMP": "a comparison such as `<`",
    "FUNC": "`min(...)` or `max(...)`",
    "DTYPE": "`int` or `bool`",
    "$END": "the end of the spec",
}
_OPERATORS = frozenset({"`+`", "`-`", "`*`", "`//`", "`%`", "`&`", "`|`", "`^`", "`<<`", "`>>`"})
_DECLS = frozenset({"`param`", "`input`", "`let`", "`region`", "`valid`", _WORDS["$END"]})
_FIRST = (_WORDS["CMP"], "`)`", "`]`", "`,`", "a name", "a number", "`(`")
_LAST = ("an operator such as `+`", "`[`", "`and`", "a new declaration", _WORDS["$END"])
# Tokens people type from other languages: (the terminal that was wanted, the hint).
_TYPOS = {
    "=": ("CMP", "to compare, write `==`"),
    "&": ("AND", "join conditions with `and`"),
    "|": (None, "regions are unioned: allow more keys with another `region`"),
}


def _typed(term: str) -> str:
    """A terminal as a person types it: `)` for RPAR, 'a name' for NAME."""
    return _WORDS.get(term) or f"`{_parser().get_terminal(term).pattern.value}`"


def _rank(shown: str) -> tuple[int, int | str]:
    """Most telling first: comparisons and closers, then values, then ways to go on."""
    if shown in _FIRST:
        return (0, _FIRST.index(shown))
    return (2, _LAST.index(shown)) if shown in _LAST else (1, shown)


def _expected(terms: set[str] | frozenset[str]) -> str | None:
    """'expected `,` or `)`': lark's acceptable terminals, grouped, in a person's words."""
    shown = {_typed(t) for t in terms}
    if {"a name", "a number"} <= shown:  # an expression starts here: names and numbers say it
        shown -= {"`-`", _WORDS["FUNC"]}
    if len(shown & _OPERATORS) > 1:
        shown = (shown - _OPERATORS) | {"an operator such as `+`"}
    if len(shown & _DECLS) > 1:
        shown = (shown - _DECLS) | {"a new declaration"}
    items = sorted(shown, key=_rank)
    if not items:
        return None
    return "expected " + (" or ".join(items) if len(items) < 3 else
                          ", ".join(items[:-1]) + " or " + items[-1])


def _missing_name(err: UnexpectedToken) -> bool:
    """Whether the keyword where a name belongs starts a declaration or a clause (a name
    was probably left out: `mask` then `region`, `region r =` then `where`)."""
    return str(err.token) in ("param", "input", "let", "region", "valid", "where", "and")


_BIT_HINT = ("`&`, `|` and `^` are bit operations on integers here: join conditions with "
             "`and`; allow more keys with another `region`")


def _bits_as_logic(tok: Token, accepts: set[str] | frozenset[str], source: str) -> bool:
    """Whether the token follows a `&&`/`||`, or is a second comparison in one condition
    that holds a bit operation (``kv < 3 | q < 9``): logic written as bit operations."""
    before = source[:tok.start_pos]
    if str(tok) in ("&", "|") and before.endswith(str(tok)):
        return True
    if tok.type != "CMP" or "AND" not in accepts:
        return False
    cond = before[max(before.rfind(w) for w in ("where", " and ", "valid")):]
    return any(op in cond for op in ("&", "|", "^"))


def _token_error(err: UnexpectedToken, source: str) -> tuple[m.Pos, str, str | None]:
    """Where, what and a hint for a token the grammar does not accept there."""
    tok, accepts = err.token, err.accepts or err.expected
    if tok.type == "$END":  # the spec stops early: point just past its last token
        line, col = (tok.end_line, tok.end_column) if tok.end_line else (1, 1)
        pos = m.Pos(line=line, column=col, end_line=line, end_column=col + 1)
        return pos, "unexpected end of spec", _expected(accepts)
    pos = _pos(tok)
    starts_decl = str(tok) in ("param", "input", "let", "region", "valid") and accepts != {"NAME"}
    if str(tok) in KEYWORDS and "NAME" in accepts and not starts_decl:
        return pos, f"`{tok}` is a keyword, not a name", (
            f"rename it, e.g. `{tok}_`" if not _missing_name(err) else
            f"is a name missing before `{tok}`? Else rename it, e.g. `{tok}_`")
    if _bits_as_logic(tok, accepts, source):
        return pos, f"unexpected `{tok}`", _BIT_HINT
    wanted, hint = _TYPOS.get(str(tok), (None, None))
    if wanted not in accepts:
        hint = _expected(accepts)
    return pos, f"unexpected `{tok}`", hint


def _syntax_error(err: UnexpectedInput, source: str, path: str) -> MaskSpecError:
    """A MaskSpecError for lark's parse failure, in the words of the spec language."""
    if isinstance(err, UnexpectedCharacters):
        char = source[err.pos_in_stream]
        pos = m.Pos(line=err.line, column=err.column, end_line=err.line, end_column=err.column + 1)
        msg, hint = f"unexpected character `{char}`", _TYPOS.get(char, (None, None))[1]
    else:
        assert isinstance(err, UnexpectedToken)  # the only other error an LALR parse raises
        pos, msg, hint = _token_error(err, source)
    return MaskSpecError(f"syntax error: {msg}", pos, source=source, path=path, hint=hint)


MAX_DEPTH = 100  # nesting of a spec's syntax tree; every stage after parsing recurses on it


def _check_depth(tree: Tree, source: str, path: str) -> None:
    """Refuse a tree nested deeper than MAX_DEPTH (walked without recursion), at the node
    where it passes the limit: the later stages would otherwise exhaust Python's stack."""
    stack = [(tree, 1, tree.meta)]
    while stack:
        node, depth, meta = stack.pop()
        meta = node.meta if not node.meta.empty else meta  # the nearest node with a span
        if depth > MAX_DEPTH:
            raise MaskSpecError(
                f"expression nested more than {MAX_DEPTH} deep", _pos(meta),
                source=source, path=path,
                hint="split it with intermediate regions or simplify it (long chains of "
                "`+` and nested calls nest one level per operation)",
            )
        stack.extend((c, depth + 1, meta) for c in node.children if isinstance(c, Tree))


def parse(source: str, path: str = "<spec>") -> m.Spec:
    """Parse spec text into the validated spec model; raise MaskSpecError on bad syntax."""
    source = source.removeprefix("\ufeff")  # a byte-order mark is not part of the text
    try:
        tree = _parser().parse(source)
    except UnexpectedInput as err:
        raise _syntax_error(err, source, path) from None
    _check_depth(tree, source, path)
    try:
        return _ToModel(source, path).transform(tree)
    except VisitError as err:  # a model validator's MaskSpecError, raised mid-transform
        if isinstance(err.orig_exc, MaskSpecError):
            raise err.orig_exc from None
        raise


def parse_file(path: str | Path) -> m.Spec:
    """Read and parse a `.mask` file: a regular file (a directory, FIFO or device is refused
    without reading it), UTF-8 text (a byte-order mark allowed)."""
    p = Path(path)
    if not p.is_file():
        what = "a directory" if p.is_dir() else "not a regular file"
        raise ValueError(f"spec path {str(p)!r} is {what}: give a .mask file")
    data = p.read_bytes()
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        pos = m.Pos(line=line, column=column, end_line=line, end_column=column + 1)
        raise MaskSpecError(
            f"the file is not UTF-8 text: byte 0x{data[err.start]:02x} cannot start a "
            "character", pos, path=str(p), hint="save the spec as UTF-8",
        ) from None
    return parse(source, str(p))
