"""Grammar-driven fuzzing: random valid specs must build exactly; mutated specs must compile or
raise MaskSpecError, nothing else.

By default 300 generated specs and 900 mutations (1,200 cases); MASKSPEC_FUZZ_EXAMPLES=N runs
N generated specs and 3·N mutations.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import warnings

import pytest
from conftest import SPECS, examples
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import shapes, valid_specs

import maskspec
from maskspec.api import CompiledMask
from maskspec.verify import random_inputs, validate

EXAMPLES = int(os.environ.get("MASKSPEC_FUZZ_EXAMPLES", "300"))
# A message names its spot (file:line:col) unless it is about the whole file.
LOCATED = re.compile(r"^fuzz\.mask(:\d+:\d+)?: error: ")
RAW_TERMINALS = re.compile(r"\b(LPAR|RPAR|LSQB|RSQB|COMMA|COLON|NAME|INT|CMP|FUNC|DTYPE)\b|\$END"
                           r"|__ANON")


@settings(max_examples=examples(EXAMPLES))
@given(valid_specs(), shapes(), st.integers(0, 2**31))
def test_generated_specs_build_exactly(spec, shape, seed):
    """Exact against create_block_mask and dense; and a region warned empty is empty."""
    text, params = spec
    B, H, q, kv, bs = shape
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", maskspec.MaskSpecWarning)
        mask = maskspec.compile(text, "fuzz.mask", **params)
    inputs = random_inputs(mask, B, H, q, kv, random.Random(seed))
    rep = validate(mask, B, H, q, kv, bs, **inputs)
    assert rep.ok, (text, params, shape, rep.inputs, rep.problems)
    said = " ".join(str(w.message) for w in warned)
    for t in mask.ir.terms:
        if f"region `{t.name}` allows no" in said:
            alone = CompiledMask(dataclasses.replace(mask.ir, terms=(t,)))
            assert not alone.dense(B, H, q, kv, **inputs).any(), (text, t.name)


@pytest.mark.parametrize(
    "text",
    [
        "mask m\nregion r = full\nvalid 0 > -2 * kv - 9 + q\n",  # a negated coefficient
        "mask m\nregion r = causal where (1 + 2) * kv <= 2 * q + 5\n",  # an unfolded one
    ],
)
def test_found_by_fuzzing(text):
    """Constant factors of kv that are not plain numbers once failed to lower."""
    rep = validate(maskspec.compile(text, "fuzz.mask"), 1, 1, 70, 90, (16, 32))
    assert rep.ok and rep.partial, rep.problems


# ---------------------------------------------------------------- mutations

SHIPPED = sorted(p.read_text() for p in SPECS.glob("*.mask"))
TOKEN = re.compile(r"#[^\n]*|[A-Za-z_]\w*|\d+|//|[<>=!]=|\s+|.")
VOCABULARY = [
    "mask", "param", "input", "region", "valid", "where", "and", "in", "int", "bool", "min",
    "max", "full", "causal", "window", "diagonal", "chunk", "document", "q", "kv", "b", "h",
    "Q_LEN", "KV_LEN", "B", "0", "1", "-1", "7", "(", ")", "[", "]", ",", ":", "=", "==", "!=",
    "<", "<=", ">", "+", "-", "*", "//", "%", "&", "|", "$", "\n", " ", "#", "min(",
]
CHARS = "()[],:=<>!+-*/%&#_ \nqkvQ019aé\t\\\"'"


@st.composite
def char_mutants(draw: st.DrawFn) -> str:
    """A shipped spec with 1-3 characters deleted, inserted or replaced."""
    text = draw(st.sampled_from(SHIPPED))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        c = "" if op == "delete" else draw(st.sampled_from(CHARS))
        text = text[:i] + c + text[i + (op != "insert"):]
    return text


@st.composite
def token_mutants(draw: st.DrawFn) -> str:
    """A shipped spec with 1-3 tokens deleted, duplicated, swapped or replaced."""
    toks = TOKEN.findall(draw(st.sampled_from(SHIPPED)))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(toks) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert"]))
        if op == "delete":
            del toks[i]
        elif op == "duplicate":
            toks.insert(i, toks[i])
        elif op == "swap" and i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
        elif op in ("replace", "insert"):
            toks[i:i + (op == "replace")] = [draw(st.sampled_from(VOCABULARY))]
    return "".join(toks)


def _compiles_or_explains(text: str) -> None:
    """Compile; the only failure allowed is a MaskSpecError that points into the text."""
    try:
        maskspec.compile(text, "fuzz.mask")
    except maskspec.MaskSpecError as err:
        msg = str(err)
        assert LOCATED.match(msg), msg
        assert not RAW_TERMINALS.search(msg), msg
        if err.pos is not None:
            lines = text.splitlines() or [""]
            assert 1 <= err.pos.line <= max(1, len(lines)), msg
            assert 1 <= err.pos.column <= len(lines[err.pos.line - 1]) + 1, msg


@settings(max_examples=examples(EXAMPLES * 3 // 2))
@given(char_mutants())
def test_character_mutations_compile_or_raise_mask_spec_error(text):
    _compiles_or_explains(text)


@settings(max_examples=examples(EXAMPLES * 3 // 2))
@given(token_mutants())
def test_token_mutations_compile_or_raise_mask_spec_error(text):
    _compiles_or_explains(text)


@pytest.mark.parametrize("text", SHIPPED, ids=[t.split("\nmask ")[-1].split()[0]
                                               for t in SHIPPED])
def test_shipped_specs_compile(text):
    """The mutation seeds themselves are valid (else the fuzzing above proves little)."""
    maskspec.compile(text, "fuzz.mask")


# ---------------------------------------------------------------- hostile specs

BIG = st.sampled_from([2**31 - 1, 2**30, 2000000000, 3037000499, 65536, 46341])


@st.composite
def hostile_specs(draw: st.DrawFn) -> str:
    """Constructs that once escaped as raw exceptions or built wrapped masks: long operator
    chains, deep nesting, constants whose products overflow, empty or contradictory input
    declarations, bool inputs as numbers, regions naming later ones."""
    kind = draw(st.sampled_from(["chain", "unary", "nest", "product", "offset", "input", "bool",
                                 "order"]))
    n = draw(st.integers(1, 700))
    if kind == "chain":
        op = draw(st.sampled_from(["+ 0", "- 1", "* 1"]))
        return f"mask m\nregion r = full where kv < q {' '.join([op] * n)}\n"
    if kind == "unary":
        return f"mask m\nregion r = full where kv < {'-' * n}q\n"
    if kind == "nest":
        f = draw(st.sampled_from(["min", "max"]))
        return f"mask m\nregion r = full where kv < {f'{f}(' * n}q{', 3)' * n}\n"
    if kind == "product":
        factors = " * ".join(str(draw(BIG)) for _ in range(draw(st.integers(1, 4))))
        side = draw(st.sampled_from(["q * {f}", "{f} - kv", "q + {f}", "(q // 2) * {f}"]))
        return f"mask m\nregion r = full where kv <= {side.format(f=factors)}\n"
    if kind == "offset":
        factors = " * ".join(str(draw(BIG)) for _ in range(draw(st.integers(1, 3))))
        prim = draw(st.sampled_from(["causal(offset = {f})", "window(left = {f})",
                                     "window(left = 3, right = {f})", "chunk(size = {f})"]))
        return f"mask m\nregion r = {prim.format(f=factors)}\n"
    if kind == "input":
        lo, hi, default = (draw(st.integers(-9, 9)) for _ in range(3))
        dtype = draw(st.sampled_from(["int", "bool"]))
        shape = draw(st.sampled_from(["B", "2147483647", "B, 70000, 300", "Q_LEN"]))
        decl = f"input x: {dtype}[{shape}] in [{lo}, {hi}] = {default}"
        use = "x[b]" if shape == "B" else "x[0]" if shape == "2147483647" else "x[q]"
        return f"mask m\n{decl}\nregion r = full where kv < q + {use} - x[b] * 0\n"
    if kind == "bool":
        op = draw(st.sampled_from(["<", "<=", "==", "!=", ">"]))
        use = draw(st.sampled_from(["a[b]", "a[b] + 1", "2 * a[b]"]))
        return f"mask m\ninput a: bool[B]\nregion r = full where kv {op} {use}\n"
    first, second = draw(st.permutations(["x", "y"]))
    body = draw(st.sampled_from(["{s}", "{f}", "causal & {s}"]))
    return f"mask m\nregion {first} = {body.format(s=second, f=first)}\nregion {second} = causal\n"


def _builds_or_explains(text: str, q: int, kv: int, seed: int) -> None:
    """Compile and validate at one shape; the only failure allowed, at either step, is a
    MaskSpecError that points into the text (an overflow found at these sizes included)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", maskspec.MaskSpecWarning)
            mask = maskspec.compile(text, "fuzz.mask")
        inputs = random_inputs(mask, 1, 1, q, kv, random.Random(seed))
        rep = validate(mask, 1, 1, q, kv, 16, **inputs)
    except maskspec.MaskSpecError as err:
        msg = str(err)
        assert LOCATED.match(msg), msg
        assert not RAW_TERMINALS.search(msg), msg
        assert err.pos is not None and 1 <= err.pos.line <= len(text.splitlines()), msg
        return
    assert rep.ok, (text, q, kv, rep.problems)


@settings(max_examples=examples(EXAMPLES), deadline=None)
@given(hostile_specs(), st.integers(1, 120), st.integers(1, 120), st.integers(0, 99))
def test_hostile_specs_build_exactly_or_raise_located_errors(text, q, kv, seed):
    _builds_or_explains(text, q, kv, seed)


@settings(max_examples=examples(EXAMPLES // 3), deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.sampled_from(SHIPPED).map(lambda t: t.encode("latin-1", "replace")),
                 st.sampled_from(SHIPPED).map(lambda t: "\ufeff".encode() + t.encode())))
def test_any_file_loads_or_raises_a_located_error(tmp_path_factory, data):
    """Binary, Latin-1 and BOM-prefixed files: a spec, or a MaskSpecError naming the file
    (and, for text, the line and column)."""
    f = tmp_path_factory.mktemp("files") / "fuzz.mask"
    f.write_bytes(data)
    try:
        maskspec.load(f)
    except maskspec.MaskSpecError as err:
        assert str(err).startswith(f"{f}:"), str(err)
        assert not RAW_TERMINALS.search(str(err)), str(err)
