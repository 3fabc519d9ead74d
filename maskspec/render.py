"""How a mask looks and what it means: block-grid pictures (terminal, PNG) and region words.

Block classes are coded by strength, EMPTY < FULL < PARTIAL, so that a downsampled
cell (max over the blocks it covers) shows PARTIAL if any block in it needs the
element mask_mod, else FULL if any block is fully computed, else EMPTY.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.text import Text

from maskspec import analysis, ir, primitives
from maskspec.blocks import BlockGrid
from maskspec.mask_mod import MaskMod
from maskspec.model import Pos

EMPTY, FULL, PARTIAL = 0, 1, 2
NAMES = {EMPTY: "EMPTY", FULL: "FULL", PARTIAL: "PARTIAL"}
PALETTE = {EMPTY: "#e9ecef", FULL: "#2f9e44", PARTIAL: "#f59f00"}
CHARS = {EMPTY: "··", FULL: "██", PARTIAL: "▒▒"}
ALLOWED, MASKED = "#1c7ed6", "#ffffff"
MAX_ROWS = 48


# ---------------------------------------------------------------- block classes


def classes(grid: BlockGrid, b: int = 0, h: int = 0) -> torch.Tensor:
    """The (Q_blocks, KV_blocks) class codes of one (batch, head), broadcast dims allowed."""
    def at(t: torch.Tensor) -> torch.Tensor:
        return t[min(b, t.shape[0] - 1), min(h, t.shape[1] - 1)]

    full, part = at(grid.full), at(grid.partial)
    codes = torch.full(full.shape, EMPTY, dtype=torch.int8)
    return codes.masked_fill(full, FULL).masked_fill(part, PARTIAL)


def pool(codes: torch.Tensor, factor: int) -> torch.Tensor:
    """Downsample by ``factor`` in both directions, each cell the strongest class inside."""
    if factor <= 1:
        return codes
    n_q, n_kv = codes.shape
    rows, cols = -(-n_q // factor), -(-n_kv // factor)
    padded = torch.full((rows * factor, cols * factor), EMPTY, dtype=codes.dtype)
    padded[:n_q, :n_kv] = codes
    return padded.view(rows, factor, cols, factor).amax(dim=(1, 3))


def factor_for(shape: tuple[int, int], max_rows: int, max_cols: int) -> int:
    """The smallest common downsampling factor that fits the grid in max_rows × max_cols."""
    return max(1, -(-shape[0] // max_rows), -(-shape[1] // max_cols))


def counts(codes: torch.Tensor) -> dict[str, int]:
    """How many blocks of each class."""
    return {NAMES[c]: int((codes == c).sum()) for c in (FULL, PARTIAL, EMPTY)}


# ---------------------------------------------------------------- terminal


def terminal(codes: torch.Tensor, width: int) -> Text:
    """The block grid as colored characters (two per cell), downsampled to ``width``."""
    label = len(str(codes.shape[0]))
    f = factor_for(tuple(codes.shape), MAX_ROWS, max(1, (width - label - 1) // 2))
    cells = pool(codes, f)
    out = Text()
    out.append(" " * (label + 1) + "kv →" + (f"  (one cell = {f}×{f} blocks)" if f > 1 else ""))
    out.append("\n")
    for i, row in enumerate(cells.tolist()):
        out.append(f"{i * f:>{label}} ", style="dim")
        for c in row:
            out.append(CHARS[c], style=PALETTE[c])
        out.append("\n")
    out.append(" " * (label + 1))
    for c in (FULL, PARTIAL, EMPTY):
        out.append(CHARS[c], style=PALETTE[c])
        out.append(f" {NAMES[c]}  ")
    out.append("\n" + " " * (label + 1) + "rows: q block index" + (
        "; a cell shows PARTIAL if any block in it is PARTIAL, else FULL if any is FULL"
        if f > 1 else ""
    ))
    return out


# ---------------------------------------------------------------- PNG


@dataclass(frozen=True)
class Zoom:
    """One block shown element by element: its grid position, spans and allowed pairs."""

    label: str
    row: int
    col: int
    q: tuple[int, int]
    kv: tuple[int, int]
    allowed: torch.Tensor  # bool (q1 - q0, kv1 - kv0)


def zoom_blocks(codes: torch.Tensor, q_bs: int, kv_bs: int, q_len: int) -> list[tuple[int, int]]:
    """Up to two PARTIAL blocks worth a closer look: one on the diagonal, one beyond Q_LEN."""
    part = (codes == PARTIAL).nonzero().tolist()
    if not part:
        return []
    mid = codes.shape[0] // 2
    diag = [(i, j) for i, j in part if j * kv_bs <= i * q_bs < (j + 1) * kv_bs]
    first = min(diag or part, key=lambda ij: (abs(ij[0] - mid), ij[1]))
    rest = [(i, j) for i, j in part if (i, j) != first and j * kv_bs >= q_len]
    picks = [first]
    if rest:
        picks.append(min(rest, key=lambda ij: (abs(ij[0] - mid), -ij[1])))
    return picks


def zoom(
    mm: MaskMod, label: str, row: int, col: int, bs: tuple[int, int], lens: tuple[int, int],
    b: int = 0, h: int = 0,
) -> Zoom:
    """Evaluate the mask_mod on one block's coordinates only (never the whole Q×KV)."""
    q0, k0 = row * bs[0], col * bs[1]
    q1, k1 = min(q0 + bs[0], lens[0]), min(k0 + bs[1], lens[1])
    q = torch.arange(q0, q1).view(-1, 1)
    kv = torch.arange(k0, k1).view(1, -1)
    allowed = torch.as_tensor(mm(torch.tensor(b), torch.tensor(h), q, kv))
    return Zoom(label, row, col, (q0, q1), (k0, k1), allowed.expand(q1 - q0, k1 - k0))


def distinct(grid: BlockGrid, B: int, H: int) -> list[tuple[torch.Tensor, list[tuple[int, int]]]]:
    """The different block grids among the B × H (batch, head) pairs, in order: each grid's
    codes with every (b, h) that has it (broadcast dims count once per real index)."""
    groups: list[tuple[torch.Tensor, list[tuple[int, int]]]] = []
    for b in range(B):
        for h in range(H):
            codes = classes(grid, b, h)
            same = next((g for g in groups if torch.equal(g[0], codes)), None)
            if same is None:
                groups.append((codes, [(b, h)]))
            else:
                same[1].append((b, h))
    return groups


GRID_LINES_MAX = 160  # draw block boundaries along an axis with at most this many cells
PNG_SIZE = (13.0, 7.5)  # inches at 100 dpi, whatever the grid's size


def figure(
    codes: torch.Tensor, bs: tuple[int, int], zooms: list[Zoom], title: str,
    notes: Sequence[str] = (),
) -> Any:
    """The block grid (colored by class, block boundaries drawn where they can be told apart),
    the element-level zooms beside it and ``notes`` (inputs, counts) below them, laid out by
    matplotlib's constrained layout so nothing overlaps at any grid size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig = plt.figure(figsize=PNG_SIZE, dpi=100, layout="constrained")
    gs = fig.add_gridspec(3, 2, width_ratios=(1.7, 1), height_ratios=(1, 1, 0.7))
    ax = fig.add_subplot(gs[:, 0])
    n_q, n_kv = codes.shape
    f = factor_for((n_q, n_kv), 1000, 1000)
    cells = pool(codes, f)
    cmap = ListedColormap([PALETTE[EMPTY], PALETTE[FULL], PALETTE[PARTIAL]])
    ax.imshow(cells.numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest",
              aspect="auto", extent=(0, cells.shape[1] * f, cells.shape[0] * f, 0))
    ax.set_xlim(0, n_kv)
    ax.set_ylim(n_q, 0)
    _cell_lines(ax, cells.shape, f)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.set_xlabel(f"kv block ({bs[1]} keys)")
    ax.set_ylabel(f"q block ({bs[0]} queries)")
    fig.suptitle(title + (f"  (cells of {f}×{f} blocks, strongest class)" if f > 1 else ""))
    for z in zooms:  # a marker of fixed size on screen: visible however many blocks there are
        ax.plot(z.col + 0.5, z.row + 0.5, marker="s", markersize=14, markerfacecolor="none",
                markeredgecolor="black", markeredgewidth=1.5)
        ax.annotate(z.label, (z.col + 0.5, z.row + 0.5), xytext=(-9, 9),
                    textcoords="offset points", ha="right", va="bottom", fontweight="bold")
    for i, z in enumerate(zooms):  # zoom_blocks picks at most two
        _zoom_axes(fig.add_subplot(gs[i, 1]), z, ListedColormap([MASKED, ALLOWED]), MaxNLocator)
    info = fig.add_subplot(gs[2, 1])
    info.axis("off")
    info.legend(handles=[Patch(color=PALETTE[c], label=NAMES[c]) for c in (FULL, PARTIAL, EMPTY)],
                loc="upper left", ncol=3, frameon=False)
    info.text(0, 0.72, "\n".join(notes), va="top", fontsize=9, family="monospace",
              transform=info.transAxes, wrap=True)
    return fig


def _cell_lines(ax: Any, shape: tuple[int, int], f: int) -> None:
    """Thin white lines between cells (blocks when f = 1) along each axis with few enough
    cells to tell them apart, so neighbouring PARTIAL blocks do not merge into one patch."""
    import numpy as np

    if shape[1] <= GRID_LINES_MAX:
        ax.set_xticks(np.arange(shape[1] + 1) * f, minor=True)
    if shape[0] <= GRID_LINES_MAX:
        ax.set_yticks(np.arange(shape[0] + 1) * f, minor=True)
    ax.xaxis.remove_overlapping_locs = ax.yaxis.remove_overlapping_locs = False  # keep all lines
    ax.tick_params(which="minor", length=0)
    ax.grid(which="minor", color="white", linewidth=0.6)


def _zoom_axes(zax: Any, z: Zoom, cmap: Any, locator: Any) -> None:
    """One zoomed block, element by element, with at most a few position labels per axis."""
    zax.imshow(z.allowed.numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
               aspect="auto", extent=(z.kv[0], z.kv[1], z.q[1], z.q[0]))
    zax.set_title(f"{z.label}: block ({z.row}, {z.col}), allowed pairs in blue", fontsize=9)
    zax.xaxis.set_major_locator(locator(nbins=3, integer=True))
    zax.yaxis.set_major_locator(locator(nbins=4, integer=True))
    zax.tick_params(labelsize=8)
    zax.set_xlabel("kv")
    zax.set_ylabel("q")


def png(
    path: str | Path, codes: torch.Tensor, bs: tuple[int, int], zooms: list[Zoom], title: str,
    notes: Sequence[str] = (),
) -> None:
    """Save ``figure(...)`` as a PNG (fixed pixel size, whatever the grid's size)."""
    import matplotlib.pyplot as plt

    fig = figure(codes, bs, zooms, title, notes)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- words


def _atom(e: ir.Expr) -> str:
    if isinstance(e, (ir.Var, ir.Size)):
        return e.name
    if isinstance(e, ir.DocEdge):
        return f"{e.side}_of_document({_atom(e.ids)})"
    if isinstance(e, ir.Load):
        return f"{e.input}[{', '.join(fmt(a) for a in e.args)}]"
    if isinstance(e, ir.Bin) and e.op in ("min", "max"):
        return f"{e.op}({fmt(e.a)}, {fmt(e.b)})"
    if isinstance(e, ir.Bin):
        return f"{_paren(e.a)} {e.op} {_paren(e.b)}"
    raise TypeError(f"cannot format {e!r}")


def _wrap(s: str) -> str:
    return f"({s})" if " " in s and not s.startswith(("min(", "max(")) else s


def _paren(e: ir.Expr) -> str:
    return _wrap(fmt(e))


def fmt(e: ir.Expr) -> str:
    """An expression as text, with sums and constant factors folded: ``q + 1``, ``Q_LEN``."""
    parts = []
    for expr, c in ir.linear(e).items():
        atom = "" if expr is None else _atom(expr)
        if c == 0:
            continue
        mag = abs(c)
        body = str(mag) if atom == "" else (atom if mag == 1 else f"{mag}*{_wrap(atom)}")
        parts.append(("-" if c < 0 else "+", body))
    if not parts:
        return "0"
    head = ("-" if parts[0][0] == "-" else "") + parts[0][1]
    return head + "".join(f" {s} {b}" for s, b in parts[1:])


def source_text(source: str, pos: Pos | None) -> str:
    """The spec text a node was parsed from (one line; spans over lines are joined)."""
    if pos is None:
        return ""
    lines = source.splitlines()[pos.line - 1 : pos.end_line]
    if len(lines) == 1:
        lines[0] = lines[0][pos.column - 1 : pos.end_column - 1]
    else:
        lines[0], lines[-1] = lines[0][pos.column - 1 :], lines[-1][: pos.end_column - 1]
    return " ".join(" ".join(lines).split())


def primitive_meaning(p: ir.Primitive) -> str:
    """A primitive's allowed keys for query q, in plain terms (its class's explain text)."""
    return primitives.registry()[p.kind].explain(dict(p.args), fmt)


def condition_meaning(c: ir.Cmp) -> str:
    """What a condition does to each row's keys, from its analysis (analysis.cond_form), or
    why it is left to the element fallback."""
    form = analysis.cond_form(c)
    if isinstance(form, ir.Residual) and not c.reads("q"):
        return (f"key set ({form.why}): the keys it allows, counted per key block "
                "(exact where its region is plain intervals)")
    if isinstance(form, ir.Residual) and form.separable is not None:
        return f"read one side at a time ({form.why}): {_separable_text(form.separable)}"
    if isinstance(form, ir.Residual):
        return f"element fallback: {form.why}; decided on the blocks the rest allows"
    if isinstance(form, analysis.RowCond):
        return f"whole rows: keeps queries with {fmt(c.left)} {c.op} {fmt(c.right)}"
    what = "kv" if isinstance(form, analysis.KvRange) else f"kv % {_paren(form.period)}"
    if form.lo is None:
        return f"key range: {what} < {fmt(form.hi)}"  # type: ignore[arg-type]
    if form.hi is None:
        return f"key range: {what} >= {fmt(form.lo)}"
    return f"key range: {what} in [{fmt(form.lo)}, {fmt(form.hi)})"


def _separable_text(sep: ir.Separable) -> str:
    """How blocks of a separable condition are classified."""
    if sep.op == "lookup":
        return (f"a lookup of `{sep.dims[0]}` at [{fmt(sep.query)}, {fmt(sep.key)}], each "  # type: ignore[index]
                "block's rectangle of it counted from prefix sums")
    how = "the blocks' shared values" if sep.op in ("==", "!=") else "the blocks' extremes"
    return f"{fmt(sep.key)} {sep.op} {fmt(sep.query)} per block, from {how}"


def describe(mask: ir.MaskIR) -> Iterator[str]:
    """Lines explaining a compiled spec: inputs, params, each region's keys, the valid clauses."""
    valid = mask.terms[0].valid if mask.terms else ()
    for d in mask.inputs:
        shape = ", ".join(fmt(s) for s in d.shape)
        rng = f" in [{fmt(d.range[0])}, {fmt(d.range[1])}]" if d.range else ""
        default = f", default {fmt(d.default)}" if d.default is not None else ", required"
        yield f"input {d.name}: {d.dtype}[{shape}]{rng}{default}"
    for k, v in mask.params.items():
        yield f"param {k} = {v}"
    names = " ∨ ".join(t.name for t in mask.terms)
    names = f"({names})" if len(mask.terms) > 1 and valid else names
    yield f"mask(b, h, q, kv) = {names}" + (" ∧ valid" if valid else "")
    yield analytic_summary(mask)
    for t in mask.terms:
        yield ""
        text = source_text(mask.source, t.pos)
        if not text.startswith(f"region {t.name} "):  # a family's member, a window's half
            text = f"region {t.name}" + (f":  {text}" if text else "")
        yield text
        for p in t.prims:
            yield f"  {source_text(mask.source, p.pos) or p.kind}  →  {primitive_meaning(p)}"
        for c in t.where:
            yield f"  where {source_text(mask.source, c.pos)}  →  {condition_meaning(c)}"
        exact = "" if t.analytic else " (a superset, cut by its key set)" if t.keyed else \
            " (a superset, cut by its conditions read one side at a time)" if t.separable \
            else " (a superset: the fallback decides its blocks)"
        yield f"  row program  →  {program_text(t.program)}{exact}"
    if valid:
        yield ""
        yield "valid (intersected with every region)"
        for c in valid:
            yield f"  {source_text(mask.source, c.pos)}  →  {condition_meaning(c)}"


def analytic_summary(mask: ir.MaskIR) -> str:
    """Which regions are built analytically and which need the element fallback."""
    if not mask.fallback:
        return "every region is analytic: blocks from row programs alone"

    def names(which: Callable[[ir.Term], bool]) -> str:
        return ", ".join(f"`{t.name}`" for t in mask.terms if which(t)) or "none"
    def alone(t: ir.Term) -> bool:
        return t.keyed or t.transposed is not None or t.separable
    def transposed(t: ir.Term) -> bool:
        return not t.keyed and t.transposed is not None
    return (f"analytic regions: {names(lambda t: t.analytic)}; cut by key sets (exact from "
            f"per-key counts): {names(lambda t: t.keyed)}; read per key (classified "
            f"transposed): {names(transposed)}; read one side at a time (exact from "
            f"per-block summaries): {names(lambda t: t.separable and not transposed(t))}; "
            f"element fallback for {names(lambda t: not t.analytic and not alone(t))} (and "
            "for the blocks where two parts meet, neither making them FULL alone)")


def program_text(p: ir.RowProgram) -> str:
    """How a term's rows are built: its strided family (classified whole) and the levels
    enumerated piece by piece (one slot per piece)."""
    def level(lv: ir.Level) -> str:
        return f"kv ≡ {fmt(lv.phase)} + [0, {fmt(lv.length)}) (mod {fmt(lv.stride)})"
    parts = ["one key range per row"]
    if p.family is not None:
        parts.append(f"one strided family {level(p.family)}")
    parts += [f"one slot per period of {level(lv)}" for lv in p.loops]
    return "; ".join(parts)
