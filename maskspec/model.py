"""The spec model: typed, validated declarations of a `.mask` file, with source positions."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Pos(BaseModel):
    """A span in the spec source (1-based, end exclusive)."""

    model_config = ConfigDict(frozen=True)
    line: int
    column: int
    end_line: int
    end_column: int


class Node(BaseModel):
    model_config = ConfigDict(frozen=True)
    pos: Pos

    def children(self) -> list[Expr]:
        """The expressions directly inside this one."""
        return []


class Num(Node):
    kind: Literal["num"] = "num"
    value: int


class Name(Node):
    kind: Literal["name"] = "name"
    id: str


class Index(Node):
    """An input looked up at runtime: ``seq_len[b]``, ``anchor[b, q // block]``."""

    kind: Literal["index"] = "index"
    id: str
    args: list[Expr]

    def children(self) -> list[Expr]:
        return self.args


class BinOp(Node):
    kind: Literal["binop"] = "binop"
    op: Literal["+", "-", "*", "//", "%", "&", "|", "^", "<<", ">>"]
    left: Expr
    right: Expr

    def children(self) -> list[Expr]:
        return [self.left, self.right]


class Neg(Node):
    kind: Literal["neg"] = "neg"
    operand: Expr

    def children(self) -> list[Expr]:
        return [self.operand]


class Func(Node):
    kind: Literal["func"] = "func"
    name: Literal["min", "max"]
    args: list[Expr]

    def children(self) -> list[Expr]:
        return self.args


Expr = Annotated[Num | Name | Index | BinOp | Neg | Func, Field(discriminator="kind")]


class Cond(Node):
    """A comparison ``left OP right``; conditions in a list are intersected."""

    op: Literal["<", "<=", ">", ">=", "==", "!="]
    left: Expr
    right: Expr
    flag: bool = False  # written bare (`keep[b, q]`), meaning `!= 0`


class Param(Node):
    """A compile-time integer, overridable when loading."""

    name: str
    default: Expr | None = None


class Input(Node):
    """A runtime tensor: dtype, shape, optional inclusive value range, optional default."""

    name: str
    dtype: Literal["int", "bool"]
    shape: list[Expr]
    range: tuple[Expr, Expr] | None = None
    default: Expr | None = None


class Arg(Node):
    name: str | None
    value: Expr


class Call(Node):
    """A region primitive such as ``causal`` or ``diagonal(period = Q_LEN)``."""

    name: str
    args: list[Arg]


class Let(Node):
    """A named expression: ``let c = min(max(q, 3), 28)``, usable wherever its body is."""

    name: str
    value: Expr


class Family(Node):
    """``[i in lo .. hi)``: a region written once for every integer i in [lo, hi)."""

    var: str
    lo: Expr
    hi: Expr


class Region(Node):
    """Allowed keys: the intersection of its calls, restricted by its ``where`` conditions;
    with a family, the union of one such region per member."""

    name: str
    calls: list[Call]
    where: list[Cond]
    family: Family | None = None


class Valid(Node):
    """Conditions every allowed (q, kv) must meet, whatever region allows it."""

    conds: list[Cond]


class Spec(BaseModel):
    """A whole spec: mask(b,h,q,kv) = (OR of regions) AND (all valid conditions)."""

    model_config = ConfigDict(frozen=True)
    name: str
    pos: Pos
    params: list[Param] = []
    inputs: list[Input] = []
    lets: list[Let] = []
    regions: list[Region] = []
    valid: list[Valid] = []
    source: str = ""
    path: str = "<spec>"
