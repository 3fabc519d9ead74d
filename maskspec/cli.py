"""The ``maskspec`` command: validate a spec against torch, show its block grid, explain it.

Exit codes: 0 all good, 1 a validation disagreed, 2 a bad spec or bad arguments.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import maskspec
from maskspec import blocks, cases, elements, ir, lower, render, standalone, verify
from maskspec.context import BuildContext
from maskspec.cuda import generator
from maskspec.errors import MaskSpecError, MaskSpecWarning, did_you_mean
from maskspec.inputs import bind_inputs, sizes_of
from maskspec.targets import spec as spec_target


class UsageError(Exception):
    """A command-line value that cannot be used (exit code 2)."""


# ---------------------------------------------------------------- argument types


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _block_size(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or Q_BS,KV_BS (e.g. 256,128), got {text!r}")
    sizes = [_positive(p) for p in parts]
    return (sizes[0], sizes[-1])


def _at(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected B,H (e.g. 1,0), got {text!r}")
    return int(parts[0]), int(parts[1])


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _param(text: str) -> tuple[str, int]:
    name, value = _pair(text)
    try:
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"param `{name}` must be an integer, got {value!r}"
        ) from None


# ---------------------------------------------------------------- inputs


def _number(token: str, dtype: str, name: str) -> int | bool:
    t = token.strip().lower()
    if dtype == "bool" and t in ("true", "false"):
        return t == "true"
    try:
        n = int(t)
    except ValueError:
        kind = "a bool" if dtype == "bool" else "an integer"
        raise UsageError(f"--input {name}: {token!r} is not {kind}") from None
    if dtype == "bool" and n not in (0, 1):
        raise UsageError(f"--input {name}: bool values are 0, 1, true or false, got {token!r}")
    if abs(n) > ir.MAX_NUMBER:
        raise UsageError(f"--input {name}: {token!r} lies outside [-{ir.MAX_NUMBER}, "
                         f"{ir.MAX_NUMBER}], the values an input may hold")
    return bool(n) if dtype == "bool" else n


def given_inputs(
    mask: maskspec.CompiledMask, pairs: Sequence[tuple[str, str]], sizes: dict[str, int]
) -> dict[str, Any]:
    """--input NAME=v1,v2,... as tensors of the declared shape (one value fills the shape)."""
    decls = {d.name: d for d in mask.ir.inputs}
    out: dict[str, Any] = {}
    for name, text in pairs:
        decl = decls.get(name)
        if decl is None:
            hint = did_you_mean(name, decls) or f"inputs: {', '.join(decls) or 'none'}"
            raise UsageError(f"spec `{mask.name}` has no input `{name}` ({hint})")
        shape = [ir.const_value(s, sizes) for s in decl.shape]
        values = [_number(tok, decl.dtype, name) for tok in text.split(",")]
        t = torch.tensor(values, dtype=torch.bool if decl.dtype == "bool" else torch.int64)
        if t.numel() == 1:
            t = t.expand(shape).clone()
        elif t.numel() != math.prod(shape):
            declared = ", ".join(render.fmt(s) for s in decl.shape)
            raise UsageError(
                f"--input {name}: got {t.numel()} values, but `{name}` has shape [{declared}] "
                f"= {shape} ({math.prod(shape)} values, row-major) at these sizes; give that "
                "many values, or one value to fill it (and --batch for the batch size)"
            )
        out[name] = t.view(shape)
    return out


def complete_inputs(
    mask: maskspec.CompiledMask, given: dict[str, Any], sizes: dict[str, int], seed: int,
    randomize_defaults: bool,
) -> tuple[dict[str, Any], list[str]]:
    """Given inputs plus random ones (verify.random_inputs) for the rest; also their names.

    Inputs with a declared default keep it unless ``randomize_defaults``.
    """
    missing = [
        d.name for d in mask.ir.inputs
        if d.name not in given and (randomize_defaults or d.default is None)
    ]
    if not missing:
        return given, []
    drawn = verify.random_inputs(
        mask, sizes["B"], sizes["H"], sizes["Q_LEN"], sizes["KV_LEN"], random.Random(seed)
    )
    return {**given, **{k: drawn[k] for k in missing}}, missing


def _values_text(t: Any) -> str:
    t = torch.as_tensor(t)
    if t.numel() <= 16:
        return str(t.long().tolist())
    return f"shape {list(t.shape)}, min {int(t.min())}, max {int(t.max())}"


def _inputs_lines(
    mask: maskspec.CompiledMask, inputs: dict[str, Any], randomized: list[str], seed: int
) -> list[str]:
    """Where every declared input's values come from: given, random (with seed) or default."""
    lines = []
    for d in mask.ir.inputs:
        if d.name not in inputs:
            lines.append(f"input {d.name} = its default, {render.fmt(d.default)}")  # type: ignore[arg-type]
            continue
        how = f"random, --seed {seed}" if d.name in randomized else "given"
        lines.append(f"input {d.name} = {_values_text(inputs[d.name])}  ({how})")
    return lines


# ---------------------------------------------------------------- validate


def _report_table(rep: verify.Report) -> Table:
    total = rep.full + rep.partial + rep.empty
    table = Table("blocks", "count", "share", title=None, box=None)
    for name, n in (("FULL", rep.full), ("PARTIAL", rep.partial), ("EMPTY", rep.empty)):
        table.add_row(name, str(n), f"{n / total:.1%}")
    return table


def cmd_validate(args: argparse.Namespace, out: Console) -> int:
    mask = _load(args)
    if args.random:
        if args.input:
            raise UsageError("--input cannot be combined with --random: each case draws its own")
        return _validate_random(mask, args, out)
    case = cases.Case(args.batch or 1, args.heads, args.q_len, args.kv_len,
                      args.block_size or (128, 128))
    sizes = sizes_of(case.B, case.H, case.Q_LEN, case.KV_LEN)
    seed = _seed(args)
    given = given_inputs(mask, args.input, sizes)
    case.inputs, randomized = complete_inputs(mask, given, sizes, seed, False)
    out.print(f"[bold]{mask.name}[/] at {case.title()}", highlight=False)
    for line in _inputs_lines(mask, case.inputs, randomized, seed):
        out.print("  " + line, highlight=False)
    _dense_fits(case)
    rep = verify.validate(mask, case.B, case.H, case.Q_LEN, case.KV_LEN, case.bs, **case.inputs)
    out.print(_report_table(rep))
    out.print(f"allowed (q, kv) pairs: {rep.density:.2%}  (sparsity {1 - rep.density:.2%})")
    if rep.ok:
        out.print(f"[green]OK[/] at BLOCK_SIZE={case.bs[0]},{case.bs[1]}: BlockMask equals "
                  "create_block_mask's in all 8 tensors (FULL and PARTIAL, kv and q "
                  "directions), layout valid, mask_mod equals dense", highlight=False)
        return 0
    out.print("[red]DISAGREE[/]:")
    for p in rep.problems:
        out.print(f"  {p}", highlight=False, markup=False)
    return 1


DENSE_BYTES_PER_PAIR = 40  # what validate's dense evaluations hold per (q, kv) pair, at most


def _dense_fits(case: cases.Case) -> None:
    """Refuse sizes whose dense evaluation would not fit in this machine's memory, with the
    estimate, rather than dying in the allocator."""
    need = case.B * case.H * case.Q_LEN * case.KV_LEN * DENSE_BYTES_PER_PAIR
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.8 * have:
        raise UsageError(
            f"validating at {case.title()} evaluates every (q, kv) pair densely: about "
            f"{need / 2**30:.1f} GiB, more than this machine's {have / 2**30:.1f} GiB allows; "
            "validate at smaller sizes (or --random up to them)")


def _validate_random(mask: maskspec.CompiledMask, args: argparse.Namespace, out: Console) -> int:
    seed = _seed(args)
    rng = random.Random(seed)
    drawn = [
        cases.random_case(mask, rng, args.q_len, args.kv_len, args.batch or 2, args.heads,
                          args.block_size)
        for _ in range(args.random)
    ]
    start = time.perf_counter()
    failures = [(c, found) for c, found in _progress(mask, drawn) if found[0]]
    elapsed = time.perf_counter() - start
    blocks_text = ("BLOCK_SIZE={},{}".format(*args.block_size) if args.block_size else
                   "BLOCK_SIZE drawn from " + " ".join(f"{q},{k}" for q, k in
                                                       cases.RANDOM_BLOCK_SIZES))
    out.print(f"{mask.name}: {len(drawn)} random cases (--seed {seed}; Q_LEN ≤ {args.q_len}, "
              f"KV_LEN ≤ {args.kv_len}, {blocks_text}): {len(drawn) - len(failures)} agree, "
              f"{len(failures)} disagree, in {elapsed:.1f} s", highlight=False)
    for case, (how, found) in failures:
        out.print(f"[red]DISAGREE[/] at {case.title()}", highlight=False)
        small, tries = cases.shrink(mask, case,
                                    lambda c, how=how: cases.problems(mask, c)[0] == how)
        if small is not case:
            found = cases.problems(mask, small)[1]
            out.print(f"  shrunk to {small.title()} ({tries} cases tried), which fails the "
                      "same way:", highlight=False)
        for p in found:
            out.print(f"  {p}", highlight=False, markup=False)
        out.print("  reproduce: " + small.command(args.spec, args.param), highlight=False,
                  markup=False, soft_wrap=True)
    return 1 if failures else 0


PLAIN_PROGRESS_S = 10.0  # without a terminal, a progress line at most this often


def _progress(
    mask: maskspec.CompiledMask, drawn: list[cases.Case]
) -> Iterator[tuple[cases.Case, tuple[str | None, list[str]]]]:
    """Each case with its result, reporting progress on stderr: a bar on a terminal, else a
    plain line every PLAIN_PROGRESS_S seconds (logs, CI)."""
    err = Console(stderr=True)
    if not err.is_terminal:
        start = last = time.perf_counter()
        bad = 0
        for i, case in enumerate(drawn, 1):
            found = cases.problems(mask, case)
            bad += found[0] is not None
            yield case, found
            now = time.perf_counter()
            if now - last >= PLAIN_PROGRESS_S and i < len(drawn):
                last = now
                err.print(f"validating: {i}/{len(drawn)} cases, {bad} disagree, "
                          f"{now - start:.0f} s", highlight=False)
        return
    progress = Progress(TextColumn("validating"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[now]}"),
                        console=err, transient=True)
    with progress:
        task = progress.add_task("", total=len(drawn), now="")
        for case in drawn:
            progress.update(task, now=f"Q_LEN={case.Q_LEN} KV_LEN={case.KV_LEN}")
            yield case, cases.problems(mask, case)
            progress.advance(task)


# ---------------------------------------------------------------- show and explain


def _sized_inputs(
    mask: maskspec.CompiledMask, args: argparse.Namespace, randomize_defaults: bool
) -> tuple[dict[str, int], dict[str, Any], list[str], int]:
    sizes = sizes_of(args.batch or 1, args.heads, args.q_len, args.kv_len)
    seed = _seed(args)
    given = given_inputs(mask, args.input, sizes)
    inputs, randomized = complete_inputs(mask, given, sizes, seed, randomize_defaults)
    return sizes, inputs, randomized, seed


def _header(mask: maskspec.CompiledMask, sizes: dict[str, int], bs: tuple[int, int]) -> str:
    return (f"{mask.name}  B={sizes['B']} H={sizes['H']} Q_LEN={sizes['Q_LEN']} "
            f"KV_LEN={sizes['KV_LEN']} BLOCK_SIZE={bs[0]},{bs[1]}")


MAX_DRAWN = 4  # how many different (batch, head) grids ``show`` draws


def cmd_show(args: argparse.Namespace, out: Console) -> int:
    mask = _load(args)
    bs = args.block_size or (128, 128)
    sizes, inputs, randomized, seed = _sized_inputs(mask, args, True)
    grid = mask.grid(sizes["B"], sizes["H"], sizes["Q_LEN"], sizes["KV_LEN"], "cpu", bs,
                     **inputs)
    groups = _groups(grid, sizes, args.at)
    n_q, n_kv = groups[0][0].shape
    out.print(_header(mask, sizes, bs) + f"  grid {n_q}×{n_kv} blocks", highlight=False)
    notes = _inputs_lines(mask, inputs, randomized, seed)
    for line in notes:
        out.print("  " + line, highlight=False)
    for i, (codes, where) in enumerate(groups[:MAX_DRAWN]):
        if sizes["B"] * sizes["H"] > 1:
            out.print(_where_text(where, sizes), highlight=False)
        out.print(render.terminal(codes, out.width))
        counts = "  ".join(f"{k} {v}" for k, v in render.counts(codes).items())
        out.print(counts, highlight=False)
        if args.png:
            path = _png_path(args.png, mask.name, where[0] if i else None)
            _write_png(path, mask, sizes, inputs, bs, codes, where[0], [*notes, counts])
            out.print(f"wrote {path}", highlight=False)
    if len(groups) > MAX_DRAWN:
        out.print(f"{len(groups) - MAX_DRAWN} more (b, h) pairs have grids of their own; draw "
                  "one with --at B,H", highlight=False)
    return 0


def _groups(
    grid: blocks.BlockGrid, sizes: dict[str, int], at: tuple[int, int] | None
) -> list[tuple[torch.Tensor, list[tuple[int, int]]]]:
    """The grids to draw: the one at ``--at``, or each different one with the (b, h) it is."""
    if at is None:
        return render.distinct(grid, sizes["B"], sizes["H"])
    b, h = at
    if b >= sizes["B"] or h >= sizes["H"]:
        raise UsageError(f"--at {b},{h} is outside the batch (B={sizes['B']}) or the heads "
                         f"(H={sizes['H']}); pass --batch / --heads to draw more")
    return [(render.classes(grid, b, h), [at])]


def _where_text(where: list[tuple[int, int]], sizes: dict[str, int]) -> str:
    """Which (batch, head) pairs a drawn grid is: ``b=1 h=0`` and the others that equal it."""
    names = [f"b={b} h={h}" for b, h in where]
    if len(where) == sizes["B"] * sizes["H"]:
        return f"{names[0]} (every b and h: the same grid)"
    more = f", and {len(names) - 6} more" if len(names) > 6 else ""
    same = f" (the same grid: {', '.join(names[1:6])}{more})" if len(names) > 1 else ""
    return names[0] + same


def _write_png(
    path: Path, mask: maskspec.CompiledMask, sizes: dict[str, int], inputs: dict[str, Any],
    bs: tuple[int, int], codes: torch.Tensor, at: tuple[int, int], notes: list[str],
) -> None:
    """The grid of batch element and head ``at`` as a PNG, with element-level zooms."""
    b, h = at
    mm = mask.mask_mod(B=sizes["B"], H=sizes["H"], Q_LEN=sizes["Q_LEN"], KV_LEN=sizes["KV_LEN"],
                       **inputs)
    lens = (sizes["Q_LEN"], sizes["KV_LEN"])
    zooms = [render.zoom(mm, "AB"[i], r, c, bs, lens, b, h)
             for i, (r, c) in enumerate(render.zoom_blocks(codes, bs[0], bs[1], lens[0]))]
    render.png(path, codes, bs, zooms, _header(mask, sizes, bs) + f"  b={b} h={h}", notes)


def _png_path(given: str, name: str, at: tuple[int, int] | None = None) -> Path:
    """Where ``--png`` writes: into a directory as ``<mask name>.png``; a name without an
    extension gets ``.png``; a second (b, h) grid gets ``_b<b>_h<h>`` after the stem."""
    path = Path(given)
    if path.is_dir():
        path = path / f"{name}.png"
    elif not path.suffix:
        path = path.with_suffix(".png")
    return path if at is None else path.with_stem(f"{path.stem}_b{at[0]}_h{at[1]}")


def block_stats(
    mask: maskspec.CompiledMask, sizes: dict[str, int], inputs: dict[str, Any],
    bs: tuple[int, int],
) -> dict[str, float]:
    """Block counts by class, work left and exact density, from the row intervals (no Q×KV)."""
    cpu = torch.device("cpu")
    ctx = BuildContext(mask.ir, sizes, bind_inputs(mask.ir, sizes, inputs, cpu), cpu, bs)
    rows = lower.row_slots(ctx)
    # a fallback mask's row programs are supersets: it is classified by parts
    grid = blocks.classify_at(ctx, None, sizes["Q_LEN"], bs) if mask.ir.fallback else \
        blocks.classify(rows, sizes["Q_LEN"], sizes["KV_LEN"], *bs)
    shape = (sizes["B"], sizes["H"], *grid.full.shape[-2:])
    full, part = int(grid.full.expand(shape).sum()), int(grid.partial.expand(shape).sum())
    total = math.prod(shape)
    if mask.ir.fallback:  # the row programs are supersets: count from the blocks
        allowed = elements.allowed(mask.ir, sizes, ctx.inputs, grid.partial, grid.full, bs)
        undecided = int(blocks.split(ctx, None, sizes["Q_LEN"], bs)[1].sum())
    else:
        allowed, undecided = blocks.allowed_per_row(rows, sizes["KV_LEN"]), 0
    scale = total // math.prod(grid.full.shape)  # heads and batches the grid broadcasts
    return {
        "FULL": full, "PARTIAL": part, "EMPTY": total - full - part,
        "work": (full + part) / total,
        "density": int(allowed.sum()) * scale / (math.prod(sizes.values())),
        "slots": rows.lo.shape[-1], "pieces": max(rows.family.enumerated(bs[1])),
        "undecided": undecided,
    }


def cmd_explain(args: argparse.Namespace, out: Console) -> int:
    mask = _load(args)
    if (args.q_len is None) != (args.kv_len is None):
        raise UsageError("give both --q-len and --kv-len (or neither)")
    out.print(f"[bold]mask {mask.name}[/]  ({escape(args.spec)})", highlight=False)
    for line in render.describe(mask.ir):
        out.print(line, highlight=False, markup=False)
    if args.q_len is None:
        return 0
    bs = args.block_size or (128, 128)
    sizes, inputs, randomized, seed = _sized_inputs(mask, args, False)
    out.print()
    out.print(f"at {_header(mask, sizes, bs)}", highlight=False)
    for line in _inputs_lines(mask, inputs, randomized, seed):
        out.print("  " + line, highlight=False)
    s = block_stats(mask, sizes, inputs, bs)
    total = s["FULL"] + s["PARTIAL"] + s["EMPTY"]
    for k in ("FULL", "PARTIAL", "EMPTY"):
        out.print(f"  {k:<8}{int(s[k]):>10} blocks  {s[k] / total:7.2%}", highlight=False)
    out.print(f"  block sparsity (EMPTY share): {s['EMPTY'] / total:.2%}", highlight=False)
    out.print(f"  attention work left (FULL + PARTIAL blocks): {s['work']:.2%}", highlight=False)
    out.print(f"  allowed (q, kv) pairs, exact: {s['density']:.4%}", highlight=False)
    out.print(f"  build cost: {s['slots']} slot(s) per row; {s['pieces']} piece(s) enumerated per "
              "strided slot at this key block size (0: its blocks are ranges)", highlight=False)
    if mask.ir.fallback:
        n, area = s["undecided"], bs[0] * bs[1]
        out.print(f"  element fallback: {n} block(s) decided by evaluating the mask, {n * area} "
                  f"(q, kv) pairs ({n / max(total, 1):.2%} of the grid)", highlight=False)
    return 0


def cmd_compile(args: argparse.Namespace, out: Console) -> int:
    mask = _load(args).ir
    emit = {"triton": generator.source, "mask": spec_target.source,
            "python": standalone.python_module}[args.emit]
    source = emit(mask)
    if args.output is None:
        sys.stdout.write(source)
    else:
        Path(args.output).write_text(source)
        out.print(f"wrote {args.output}", highlight=False)
    return 0


# ---------------------------------------------------------------- plumbing


def _load(args: argparse.Namespace) -> maskspec.CompiledMask:
    return maskspec.load(args.spec, strict=args.strict, **dict(args.param))


def _seed(args: argparse.Namespace) -> int:
    if args.seed is None:
        args.seed = random.randrange(2**31)
    return args.seed


STRICT_HELP = ("refuse a spec whose blocks need the element fallback (a condition with no "
               "interval form in kv)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maskspec",
        description="Compile .mask attention-mask specs: validate, show, explain, compile.",
    )
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an internal error (exit code 3)")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, sizes_required: bool) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("spec", help="a .mask file, or a shipped spec's name (eagle3)")
        c.add_argument("--q-len", type=_positive, required=sizes_required, help="Q_LEN")
        c.add_argument("--kv-len", type=_positive, required=sizes_required, help="KV_LEN")
        c.add_argument("--batch", type=_positive,
                       help="B (default 1; --random draws it from 1..B, B default 2)")
        c.add_argument("--heads", type=_positive, default=1, help="H (default 1)")
        c.add_argument("--block-size", type=_block_size,
                       help="N or Q_BS,KV_BS (default 128; --random: drawn per case)")
        c.add_argument("--param", type=_param, action="append", default=[], metavar="K=V",
                       help="override a param (repeatable)")
        c.add_argument("--input", type=_pair, action="append", default=[], metavar="NAME=V,..",
                       help="input values, row-major, or one value to fill (repeatable)")
        c.add_argument("--seed", type=int, help="seed for random inputs and cases")
        c.add_argument("--strict", action="store_true", help=STRICT_HELP)
        return c

    v = command("validate", "Check the analytic BlockMask against create_block_mask and the "
                "dense mask (exit 0 only if all agree).", True)
    v.add_argument("--random", type=_positive, metavar="K",
                   help="check K random shapes (up to --q-len/--kv-len) with random inputs")
    v.set_defaults(run=cmd_validate)
    s = command("show", "Draw the FULL/PARTIAL/EMPTY block grid (inputs not given are random).",
                True)
    s.add_argument("--png", metavar="FILE", help="also save a PNG with element-level zooms")
    s.add_argument("--at", type=_at, metavar="B,H",
                   help="draw only this batch element and head (default: each different "
                   f"grid, up to {MAX_DRAWN})")
    s.set_defaults(run=cmd_show)
    e = command("explain", "Say what each region allows and, at given sizes, what is left.",
                False)
    e.set_defaults(run=cmd_explain)
    c = sub.add_parser("compile", help="Emit a standalone module (needs only torch).",
                       description="Emit a standalone Python module, importing only torch, "
                       "with the spec's mask_mod and its analytic BlockMask builder; or, with "
                       "--emit triton, the Triton kernel maskspec generates for CUDA builds; "
                       "with --emit mask, the spec itself, resolved (params folded, valid "
                       "moved into each region).")
    c.add_argument("spec", help="a .mask file, or a shipped spec's name (eagle3)")
    c.add_argument("--emit", choices=["python", "triton", "mask"], default="python",
                   help="what to emit (default python; mask: the spec resolved, params folded)")
    c.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    c.add_argument("--param", type=_param, action="append", default=[], metavar="K=V",
                   help="override a param (repeatable)")
    c.add_argument("--strict", action="store_true", help=STRICT_HELP)
    c.set_defaults(run=cmd_compile)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``maskspec`` command; returns the exit code: 0 agreed (or done),
    1 a disagreement, 2 a bad spec or argument, 3 an internal error (one line; ``--debug``
    shows its traceback)."""
    args = _parser().parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)  # messages stay whole lines
    with warnings.catch_warnings():
        warnings.simplefilter("always", MaskSpecWarning)
        warnings.showwarning = lambda message, *_: err.print(
            str(message), highlight=False, markup=False)
        try:
            return args.run(args, Console(soft_wrap=True))
        except MaskSpecError as e:
            err.print(str(e), highlight=False, markup=False)
        except (UsageError, ValueError, OSError) as e:
            err.print(f"error: {e}", highlight=False, markup=False)
        except Exception as e:
            if args.debug:
                raise
            err.print(f"internal error: {type(e).__name__}: {e} (this is a bug in maskspec; "
                      "rerun with --debug for the traceback)", highlight=False, markup=False)
            return 3
    return 2


if __name__ == "__main__":
    sys.exit(main())
