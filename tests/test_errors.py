"""Errors that teach: bad specs point at file:line:col with the line and a caret; bad runtime
inputs raise ValueError naming the input, before any block is computed."""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch
from conftest import SPECS

import maskspec
import maskspec.lower
from maskspec import MaskSpecError

PATH = "bad.mask"
# lark's terminal names must never reach a person.
RAW_TERMINALS = re.compile(r"\b(LPAR|RPAR|LSQB|RSQB|COMMA|COLON|NAME|INT|CMP|FUNC|DTYPE)\b|\$END"
                           r"|__ANON")


def _compile(text: str, **params: int) -> maskspec.CompiledMask:
    return maskspec.compile(text, PATH, **params)


def _error(text: str, **params: int) -> MaskSpecError:
    with pytest.raises(MaskSpecError) as info:
        _compile(text, **params)
    return info.value


def _line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset in ``text``."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def assert_points_at(err: MaskSpecError, text: str, offset: int, width: int | None = None) -> None:
    """The message names file:line:col of ``offset``, shows that line and a caret under it."""
    line, col = _line_col(text, offset)
    msg = str(err)
    head, *rest = msg.splitlines()
    assert head.startswith(f"{PATH}:{line}:{col}: error: "), msg
    source_line = text.splitlines()[line - 1] if text.splitlines()[line - 1:] else ""
    assert rest[0] == "  " + source_line, msg
    caret = rest[1]
    assert caret.startswith("  " + " " * (col - 1) + "^"), msg
    assert set(caret.strip()) == {"^"}, msg
    if width is not None:
        assert len(caret.strip()) == width, msg
    assert not RAW_TERMINALS.search(msg), msg


def _at(text: str, needle: str, nth: int = 0) -> int:
    """Offset of the ``nth`` occurrence of ``needle``."""
    offset = -1
    for _ in range(nth + 1):
        offset = text.index(needle, offset + 1)
    return offset


def _hint(err: MaskSpecError) -> str:
    lines = [ln for ln in str(err).splitlines() if ln.startswith("  hint: ")]
    assert len(lines) == 1, str(err)
    return lines[0].removeprefix("  hint: ")


# ---------------------------------------------------------------- syntax


def test_missing_closing_paren_in_a_guard():
    text = "mask m\nregion r = causal where (kv < 3\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "<"), width=1)
    assert "syntax error: unexpected `<`" in str(err)
    assert _hint(err) == "expected `)`"


def test_missing_closing_paren_before_next_declaration():
    text = "mask m\nregion r = window(left = 4\nvalid q < 3\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "valid"), width=5)
    assert "unexpected `valid`" in str(err)
    assert _hint(err) == "expected `)` or `,`"


def test_stray_character():
    text = "mask m\nregion r = causal where kv < q $ 3\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "$"), width=1)
    assert "unexpected character `$`" in str(err)


@pytest.mark.parametrize(
    ("text", "needle", "nth", "hint"),
    [
        ("mask m\nregion r = causal where kv = q\n", "=", 1, "to compare, write `==`"),
        ("mask m\nregion r = causal where kv < q && q < 9\n", "&", 1,
         "join conditions with `and`"),
        ("mask m\nregion r = causal where kv < 3 | q < 9\n", "<", 1, "another `region`"),
        ("mask m\nregion r = causal where kv < 3 || q < 9\n", "|", 1, "bit operations"),
        ("mask m\nregion r = causal where kv < q & q > 9\n", ">", 0, "join conditions"),
    ],
)
def test_operators_from_other_languages(text, needle, nth, hint):
    err = _error(text)
    assert_points_at(err, text, _at(text, needle, nth=nth), width=1)
    assert hint in _hint(err)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("mask m\nregion r = window(left = 3", "expected `)` or `,`"),
        ("mask m\nregion r = causal(\n\n", "expected `)`, a name, a number or `(`"),
        ("mask m\nparam\n", "expected a name"),
        ("mask m\nregion r = causal where kv <   # the bound is missing\n", "expected a name"),
        ("mask m\ninput s: int[B", "expected `]` or `,`"),
        ("mask m\nregion r = causal &", "expected a name"),
        ("mask", "expected a name"),
    ],
)
def test_unfinished_declaration_at_end_of_spec(text, hint):
    err = _error(text)
    code = text.split("#")[0].rstrip()
    assert_points_at(err, text, len(code), width=1)  # just past the last token
    assert "syntax error: unexpected end of spec" in str(err)
    assert _hint(err).startswith(hint)


def test_empty_spec():
    err = _error("")
    assert str(err).startswith(f"{PATH}:1:1: error: syntax error: unexpected end of spec")
    assert _hint(err) == "expected `mask`"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("mask m\nregion where = causal\n", "where ="),
        ("mask m\nparam in: int = 3\nregion r = causal\n", "in:"),
        ("mask m\nregion r = causal where kv < and\n", "and"),
        ("mask m\nparam min: int = 3\nregion r = causal\n", "min"),
        ("mask valid\nregion r = causal\n", "valid"),
    ],
)
def test_keyword_used_as_a_name(text, needle):
    word = re.match(r"\w+", needle).group()
    err = _error(text)
    assert_points_at(err, text, _at(text, needle), width=len(word))
    assert f"syntax error: `{word}` is a keyword, not a name" in str(err)
    assert _hint(err).endswith(f"ename it, e.g. `{word}_`")


@pytest.mark.parametrize(("text", "needle"), [
    ("mask\nregion r = causal\n", "region"),
    ("mask m\nregion r = where kv < q\n", "where"),
])
def test_keyword_where_a_name_was_left_out(text, needle):
    err = _error(text)
    assert_points_at(err, text, _at(text, needle), width=len(needle))
    assert _hint(err) == f"is a name missing before `{needle}`? Else rename it, e.g. `{needle}_`"


def test_names_that_start_with_keywords_are_names():
    """Reserving keywords must not reserve prefixes: `minimum`, `integer`, `wherever` ..."""
    text = (
        "mask wherever\n"
        "param integer: int = 2\nparam minimum: int = 1\nparam max_len: int = 9\n"
        "input input_len: int[B] in [0, Q_LEN] = Q_LEN\n"
        "region region_a = window(left = integer + minimum) where kv < max(max_len, 3)\n"
        "valid q < input_len[b]\n"
    )
    d = _compile(text).dense(1, 1, 12, 12, input_len=torch.tensor([10]))
    q = torch.arange(12).view(-1, 1)
    kv = torch.arange(12).view(1, -1)
    expected = (kv >= q - 3) & (kv <= q) & (kv < 9) & (q < 10)
    assert torch.equal(d[0, 0], expected)


# ---------------------------------------------------------------- names and primitives


def test_unknown_name_suggests_a_close_one():
    text = "mask m\nregion r = causal where kv < Q_LN\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "Q_LN"), width=4)
    assert "unknown name `Q_LN`" in str(err)
    assert _hint(err) == "did you mean `Q_LEN`?"


def test_unknown_name_far_from_any_has_no_guess():
    text = "mask m\nparam w: int = 3\nregion r = window(left = zzz)\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "zzz"), width=3)
    assert "unknown name `zzz`" in str(err) and "did you mean" not in str(err)


def test_unknown_primitive_suggests_a_close_one():
    text = "mask m\nregion r = causl\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "causl"))
    assert "unknown region primitive `causl`" in str(err)
    assert _hint(err) == "did you mean `causal`?"


def test_sliding_window_points_to_window():
    text = "mask m\nregion r = sliding_window(128)\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "sliding_window"))
    assert _hint(err) == "write `window(left = N)`"


@pytest.mark.parametrize(
    ("text", "needle", "nth", "message", "hint"),
    [
        ("mask m\nregion r = window(lft = 3)\n", "lft", 0, "`window` has no argument `lft`",
         "did you mean `left`?"),
        ("mask m\nregion r = window(right = 2)\n", "window", 0, "`window` needs argument `left`",
         "e.g. `window(left = ...)`"),
        ("mask m\nregion r = diagonal\n", "diagonal", 0, "`diagonal` needs argument `period`",
         None),
        ("mask m\nregion r = causal(1, 2)\n", "2", 0, "`causal` takes 1 argument(s): offset",
         None),
        ("mask m\nregion r = full(3)\n", "3", 0, "`full` takes 0 argument(s)", None),
        ("mask m\nregion r = causal(offset = 1, offset = 2)\n", "offset", 1,
         "argument `offset` given twice", None),
        ("mask m\nregion r = window(left = 1, 2)\n", "2", 0, "`window` takes 2 argument(s)",
         None),
    ],
)
def test_wrong_arguments(text, needle, nth, message, hint):
    err = _error(text)
    assert_points_at(err, text, _at(text, needle, nth))
    assert message in str(err)
    if hint:
        assert _hint(err) == hint


def test_constant_argument_cannot_depend_on_q():
    text = "mask m\nregion r = diagonal(period = q)\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "q)"), width=1)
    assert "`q` cannot be used in this argument, which must be constant" in str(err)


# ---------------------------------------------------------------- guards


def test_product_of_variables_is_refused():
    text = "mask m\nregion r = full where kv * kv < 3\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "kv * kv"))
    assert "a product needs one constant factor" in str(err)


@pytest.mark.parametrize(
    ("guard", "needle", "message"),
    [
        ("min(kv, 3) < q", "min(kv, 3)", "kv inside min() has no interval form"),
        ("kv != q", "kv != q", "`!=` on kv splits a row's keys in two"),
        ("kv + kv % 4 < q", "kv + kv % 4", "two different kv terms"),
        ("(2 * kv) // 3 < q", "(2 * kv) // 3", "`//` here reads kv in a form with no interval"),
        ("kv % 2", "kv % 2", "`!=` on kv splits"),  # a bare flag: `kv % 2 != 0`
        ("(kv ^ q) & 1 == 0", "kv ^ q", "kv inside `^` has no interval form"),
    ],
)
def test_strict_refuses_a_guard_with_no_interval_form(guard, needle, message):
    """Without strict the element fallback builds it (tests/test_fallback.py); strict says
    where and why."""
    text = f"mask m\nregion r = full where {guard}\n"
    assert _compile(text).ir.fallback
    with pytest.raises(MaskSpecError) as info:
        maskspec.compile(text, PATH, strict=True)
    assert_points_at(info.value, text, _at(text, needle))
    assert "region `r` needs the element fallback: " + message in str(info.value)
    assert _hint(info.value)


@pytest.mark.parametrize(("guard", "divisor"), [("q % kv < 3", "kv"), ("kv // q < 2", "q")])
def test_divisor_must_be_constant(guard, divisor):
    text = f"mask m\nregion r = causal where {guard}\n"
    err = _error(text)
    assert_points_at(err, text, text.rindex(divisor), width=len(divisor))
    assert "needs a constant divisor" in str(err)


@pytest.mark.parametrize(
    ("text", "needle", "message"),
    [
        ("mask m\nregion r = chunk(size = 0)\n", "0", "the size of `chunk` must be positive"),
        ("mask m\nregion r = diagonal(-3)\n", "-3", "the period of `diagonal` must be positive"),
        ("mask m\nregion r = full where kv % 0 < 1\n", "0", "the divisor of `%` must be positive"),
        ("mask m\nparam d: int = 2\nregion r = full where kv // (d - 2) < 1\n", "d - 2",
         "the divisor of `//` must be positive, got 0"),
        ("mask m\nregion r = causal(99999999999)\n", "9", "numbers must be at most 2147483647"),
    ],
)
def test_divisors_periods_and_numbers_out_of_range(text, needle, message):
    err = _error(text)
    assert_points_at(err, text, _at(text, needle))
    assert message in str(err)


def test_param_override_that_makes_a_chunk_empty():
    text = "mask m\nparam s: int = 4\nregion r = chunk(size = s)\n"
    assert_points_at(_error(text, s=0), text, text.rindex("s)"), width=1)


def test_divisor_that_is_zero_at_the_given_sizes():
    text = "mask m\nregion r = full where kv % (Q_LEN - 50) < 3\n"
    mask = _compile(text)
    with pytest.raises(MaskSpecError, match="divisor is 0 at B=1, H=1, Q_LEN=50,") as err:
        mask.grid(1, 1, 50, 70, "cpu", 16)
    assert f":2:{text.splitlines()[1].index('Q_LEN - 50') + 1}:" in str(err.value)
    period = _compile("mask m\nregion r = diagonal(period = Q_LEN - 50)\n")
    with pytest.raises(MaskSpecError, match="divisor is 0"):
        period.block_mask(1, 1, 50, 70, "cpu", 16)


# ---------------------------------------------------------------- inputs


DECL = "mask m\ninput lens: int[B] in [0, Q_LEN] = Q_LEN\n"


def test_input_used_without_index():
    text = DECL + "region r = causal where q < lens\n"
    err = _error(text)
    assert_points_at(err, text, text.rindex("lens"), width=4)
    assert "input `lens` must be indexed" in str(err)
    assert _hint(err).startswith("write `lens[b]`")


def test_input_indexed_by_kv_under_strict():
    text = DECL + "region r = causal where q < lens[kv]\n"
    with pytest.raises(MaskSpecError) as info:
        maskspec.compile(text, PATH, strict=True)
    assert_points_at(info.value, text, text.rindex("lens[kv]"), width=8)
    assert "an input read at kv has no interval form" in str(info.value)


def test_input_with_wrong_number_of_indices():
    text = DECL + "region r = causal where q < lens[b, q]\n"
    err = _error(text)
    assert_points_at(err, text, text.rindex("lens"), width=len("lens[b, q]"))
    assert "input `lens` has 1 dimension(s) but is indexed with 2" in str(err)


def test_undeclared_input_suggests_a_close_one():
    text = DECL + "region r = causal where q < len[b]\n"
    err = _error(text)
    assert_points_at(err, text, text.rindex("len[b]"))
    assert "unknown input `len`" in str(err)
    assert _hint(err) == "did you mean `lens`?"


def test_undeclared_input_says_how_to_declare():
    text = "mask m\nregion r = causal where q < seq_len[b]\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "seq_len"))
    assert _hint(err) == "declare it with `input`"


# ---------------------------------------------------------------- declarations


def test_param_without_value():
    text = "mask m\nparam w: int\nregion r = window(left = w)\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "param"))
    assert "param `w` has no default and no value was given" in str(err)
    assert _hint(err) == ("pass it: maskspec.load(path, w=...) in Python, --param w=... on the "
                          "command line")
    assert _compile(text, w=2).ir.params == {"w": 2}


@pytest.mark.parametrize(
    ("text", "needle", "message"),
    [
        ("mask m\nparam w: int = 3\nparam w: int = 4\nregion r = causal\n", "param w: int = 4",
         "`w` is already declared as a param"),
        ("mask m\nregion r = causal\nregion r = full\n", "region r = full",
         "`r` is already declared as a region"),
        ("mask m\nparam n: int = 3\ninput n: int[B]\nregion r = causal\n", "input n",
         "`n` is already declared as a param"),
        ("mask m\nparam q: int = 3\nregion r = causal\n", "param q",
         "`q` is a built-in name and cannot name a param"),
        ("mask m\nregion causal = causal\n", "region causal",
         "`causal` is a built-in name and cannot name a region"),
    ],
)
def test_duplicate_or_reserved_declarations(text, needle, message):
    err = _error(text)
    assert_points_at(err, text, _at(text, needle))
    assert message in str(err)


def test_spec_without_region():
    text = "mask m\nparam w: int = 3\nvalid q < w\n"
    err = _error(text)
    assert_points_at(err, text, 0)
    assert "mask `m` declares no region" in str(err)
    assert _hint(err) == "add one, e.g. `region all = causal`"


def test_load_names_the_file(tmp_path):
    path = tmp_path / "typo.mask"
    path.write_text("mask m\nregion r = causl\n")
    with pytest.raises(MaskSpecError, match=re.escape(f"{path}:2:12: error: unknown region")):
        maskspec.load(path)


# ---------------------------------------------------------------- runtime inputs


@pytest.fixture
def no_lowering(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the build gets as far as lowering: input errors must come first."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("lowering ran before the inputs were checked")

    monkeypatch.setattr(maskspec.lower, "row_slots", boom)


@pytest.mark.parametrize(
    ("B", "seq_len", "pattern"),
    [
        (2, torch.tensor([5]), r"input `seq_len` must have shape \[2\].*got \[1\]"),
        (1, torch.tensor([[5]]), r"input `seq_len` must have shape \[1\].*got \[1, 1\]"),
        (1, torch.tensor([101]), r"input `seq_len` must lie in \[0, 100\] but seq_len\[0\] = 101"),
        (2, torch.tensor([3, -1]), r"input `seq_len` must lie in \[0, 100\] but seq_len\[1\] = -1"),
        (1, torch.tensor([5.0]), r"input `seq_len` must be an integer tensor, got torch.float32"),
        (1, torch.tensor([True]), r"input `seq_len` must be an integer tensor, got torch.bool"),
        (1, torch.tensor([5], device="meta"), r"input `seq_len` is on meta .* built on cpu"),
        (1, "5", r"input `seq_len` must be a tensor or a list of numbers"),
    ],
)
def test_bad_eagle3_seq_len(eagle3, no_lowering, B, seq_len, pattern):
    with pytest.raises(ValueError, match=pattern):
        eagle3.block_mask(B, 1, 100, 300, "cpu", 32, seq_len=seq_len)


@pytest.mark.parametrize("method", ["dense", "mask_mod", "grid"])
def test_every_entry_point_checks_inputs(eagle3, method):
    bad = torch.tensor([101])
    with pytest.raises(ValueError, match="input `seq_len` must lie in"):
        if method == "mask_mod":
            eagle3.mask_mod(B=1, Q_LEN=100, KV_LEN=300, seq_len=bad)
        else:
            getattr(eagle3, method)(1, 1, 100, 300, "cpu", seq_len=bad)


def test_unknown_input_name(eagle3, no_lowering):
    with pytest.raises(ValueError, match=r"spec `eagle3` has no input `seq_lens`; did you mean "
                                         r"`seq_len`\?"):
        eagle3.block_mask(1, 1, 100, 300, "cpu", 32, seq_lens=torch.tensor([5]))


def test_unknown_param_override():
    text = "mask m\nparam width: int = 8\nregion r = window(left = width)\n"
    with pytest.raises(ValueError, match=r"spec `m` has no param `widht`; did you mean `width`"):
        _compile(text, widht=4)
    with pytest.raises(ValueError, match=r"spec `eagle3` has no param `period` \(params: none\)"):
        maskspec.load(SPECS / "eagle3.mask", period=4)


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 1, 100, 300), "B"),
        ((1, -1, 100, 300), "H"),
        ((1, 1, 100.0, 300), "Q_LEN"),
        ((1, 1, 100, True), "KV_LEN"),
        ((1, 1, "100", 300), "Q_LEN"),
    ],
)
def test_sizes_must_be_positive_ints(eagle3, no_lowering, args, name):
    with pytest.raises(ValueError, match=rf"{name} must be a positive int"):
        eagle3.block_mask(*args, "cpu", 32)


def test_lengths_must_fit_int32_indices(eagle3, no_lowering):
    with pytest.raises(ValueError, match=r"KV_LEN must be below 2\*\*31"):
        eagle3.block_mask(1, 1, 100, 2**31, "cpu", 32)


@pytest.mark.parametrize("bs", [0, -8, (64,), (64, 0), 16.0, "64"])
def test_block_size_must_be_positive(eagle3, no_lowering, bs):
    with pytest.raises(ValueError, match="BLOCK_SIZE must be a positive int"):
        eagle3.block_mask(1, 1, 100, 300, "cpu", bs)


# ---------------------------------------------------------------- numbers and lookups


@pytest.mark.parametrize("text, needle", [
    ("mask m\ninput a: bool[B]\ninput c: bool[B]\nregion r = causal\nvalid a[b] + c[b] == 1\n",
     "a[b] +"),
    ("mask m\ninput a: bool[B]\nregion r = causal\nvalid -a[b] < 0\n", "a[b] <"),
    ("mask m\ninput a: bool[B]\nregion r = window(left = a[b])\n", "a[b])"),
    ("mask m\ninput a: bool[B]\nregion r = causal\nvalid max(a[b], 0) == 1\n", "a[b],"),
])
def test_bool_inputs_are_not_numbers(text, needle):
    """torch adds bools as a logical OR (True + True is True): refused, not miscounted."""
    err = _error(text)
    assert_points_at(err, text, _at(text, needle), width=4)
    assert "input `a` is bool" in str(err) and "declare it `int`" in str(err)


def test_bool_inputs_still_compare_and_flag():
    text = "mask m\ninput a: bool[B]\nregion r = causal\nvalid a[b] == 1\n"
    flags = torch.tensor([False, True])
    dense = _compile(text).dense(2, 1, 4, 4, a=flags)
    assert dense[0].sum() == 0 and dense[1].sum() == 10


@pytest.mark.parametrize("value, message", [
    (2.7, "must be an integer"), (True, "must be an integer"), ("3", "must be an integer"),
    (2**31, "must lie in"), (-(2**63) + 1, "must lie in"),
])
def test_param_overrides_are_checked_integers(value, message):
    with pytest.raises(ValueError, match=f"param `o` {message}"):
        _compile("mask m\nparam o: int = 0\nregion r = causal(offset = o)\n", o=value)


def test_input_values_are_bounded(no_lowering):
    mask = _compile("mask m\ninput x: int[B]\nregion r = causal\nvalid kv < x[b] + 2\n")
    with pytest.raises(ValueError, match=r"input `x` must lie in \[-2147483647, 2147483647\]"):
        mask.block_mask(1, 1, 8, 8, "cpu", 4, x=[2**63 - 2])


def test_lookup_through_another_input_is_range_checked(no_lowering):
    """An index that reads an input has no static bounds: its values are checked."""
    text = ("mask m\ninput which: int[B]\ninput lens: int[4]\nregion r = causal\n"
            "valid q < lens[which[b]]\n")
    mask = _compile(text)
    with pytest.raises(MaskSpecError, match=r"index 0 of `lens` ranges over \[1, 9\]") as err:
        mask.block_mask(2, 1, 8, 8, "cpu", 4, which=[1, 9], lens=[2, 3, 4, 5])
    assert_points_at(err.value, text, _at(text, "lens[which"))
    assert "reads inputs" in str(err.value)


def test_lookup_through_another_input_reads_the_right_entry():
    mask = _compile("mask m\ninput which: int[B]\ninput lens: int[4]\nregion r = causal\n"
                    "valid q < lens[which[b]]\n")
    dense = mask.dense(2, 1, 8, 8, which=[1, 3], lens=[2, 3, 4, 5])
    rows = dense.any(-1)[:, 0]
    assert rows.sum(-1).tolist() == [3, 5]


def test_mask_mod_needs_the_sizes_that_index_given_inputs():
    mask = _compile("mask m\ninput a: int[8]\nregion r = causal where kv < a[q]\n")
    with pytest.raises(ValueError, match=r"input `a` .* indexed by q: pass mask_mod\(Q_LEN=...\)"):
        mask.mask_mod(a=torch.arange(8))
    with pytest.raises(MaskSpecError, match="index 0 of `a` ranges over"):
        mask.mask_mod(a=torch.arange(8), Q_LEN=20)
    eagle3 = maskspec.load("eagle3")
    with pytest.raises(ValueError, match=r"`seq_len` .* indexed by b: pass mask_mod\(B=...\)"):
        eagle3.mask_mod(Q_LEN=4, KV_LEN=8, seq_len=[1, 2])
    eagle3.mask_mod(Q_LEN=4, KV_LEN=8)  # defaults are uniform: nothing to check


def test_document_ids_must_have_one_row_per_batch_element():
    text = "mask m\ninput doc: int[H, KV_LEN]\nregion r = causal & document(doc)\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, "H,"), width=1)
    assert "declare `doc` as int[B, N]" in str(err)


def test_input_shapes_must_be_positive():
    text = "mask m\ninput a: int[-1]\nregion r = causal\nvalid q < a[0]\n"
    assert "a dimension of input `a` must be positive" in str(_error(text))
    at_sizes = _compile("mask m\ninput x: int[Q_LEN - 10] = 0\nregion r = causal\n")
    with pytest.raises(ValueError, match=r"input `x` .* would have shape \[-2\] at B=1, H=1, "
                       r"Q_LEN=8, KV_LEN=8"):
        at_sizes.block_mask(1, 1, 8, 8, "cpu", 4)
    zero = _compile("mask m\ninput x: int[Q_LEN // (KV_LEN - Q_LEN)] = 0\nregion r = causal\n")
    with pytest.raises(ValueError, match=r"a dimension of input `x` \(declared at bad.mask:2\) "
                       "divides by zero"):
        zero.block_mask(1, 1, 8, 8, "cpu", 4)


def test_document_offsets_are_checked():
    with pytest.raises(ValueError, match="must start at 0"):
        maskspec.document_ids(torch.tensor([2, 5, 8]), 10)
    with pytest.raises(ValueError, match="must be integers"):
        maskspec.document_ids(torch.tensor([0.0, 5.0, 8.0]), 10)
    with pytest.raises(ValueError, match="non-decreasing"):
        maskspec.document_ids(torch.tensor([0, 5, 3]), 10)


def test_missing_spec_file_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match=r"no spec file 'eagle'; did you mean `eagle3`\?"
                       r" \(shipped specs, loadable by name: block_diffusion, causal, .*eagle3"):
        maskspec.load("eagle")


def test_cpu_with_an_index_is_the_cpu(eagle3):
    bm = eagle3.block_mask(2, 1, 64, 128, "cpu:0", 32, seq_len=torch.tensor([10, 64]))
    assert bm.kv_num_blocks.device.type == "cpu"


@pytest.mark.parametrize("text, message, line", [
    ("mask m\nregion r = full where kv < q" + " + 0" * 700 + "\n", "nested more than", 2),
    ("mask m\nregion r = full where kv < " + "-" * 700 + "q\n", "nested more than", 2),
    ("mask m\nregion r = full where kv < " + "min(" * 400 + "q" + ", 1)" * 400 + "\n",
     "nested more than", 2),
    ("mask m\ninput a: bool[B]\nregion r = full where kv < a[b]\n", "is bool", 3),
    ("mask m\ninput x: int[B] in [5, 0]\nregion r = full where kv < x[b]\n", "is empty", 2),
    ("mask m\ninput x: int[B] in [0, 5] = 9\nregion r = full where kv < x[b]\n",
     "outside its own range", 2),
    ("mask m\ninput x: bool[B] in [0, 1]\nregion r = full where x[b]\n", "takes no range", 2),
    ("mask m\ninput x: int[2147483647]\nregion r = full where kv < x[0]\n", "entries", 2),
    ("mask m\nregion x = y\nregion y = causal\n", "declared after it", 2),
    ("mask m\nregion x = x\n", "names itself", 2),
])
def test_hostile_specs_get_located_errors(text, message, line):
    err = _error(text)
    assert message in err.message and err.pos is not None and err.pos.line == line
    assert not RAW_TERMINALS.search(str(err))


def test_bool_inputs_may_still_be_flags_or_equal():
    _compile("mask m\ninput a: bool[B]\nregion r = full where a[b]\n")
    _compile("mask m\ninput a: bool[B]\nregion r = full where a[b] == 1\n")


def test_a_byte_order_mark_is_not_part_of_the_spec(tmp_path):
    f = tmp_path / "bom.mask"
    f.write_bytes("\ufeffmask m\nregion r = causal\n".encode())
    assert maskspec.load(f).name == "m"


def test_files_that_are_not_utf8_or_not_files_are_refused(tmp_path):
    f = tmp_path / "latin1.mask"
    f.write_bytes(b"mask m\nregion r = causal  # caf\xe9\n")
    with pytest.raises(MaskSpecError, match="not UTF-8") as info:
        maskspec.load(f)
    assert (info.value.pos.line, info.value.pos.column) == (2, 25)  # the byte 0xe9
    with pytest.raises(ValueError, match="is a directory"):
        maskspec.load(tmp_path)
    fifo = tmp_path / "pipe.mask"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):  # refused without reading
        maskspec.load(fifo)


@pytest.mark.parametrize("text", [
    "mask m\nregion r = window(left = -5)\n",
    "mask m\nregion r = causal where 0\n",
    "mask m\nregion r = full where kv < q and kv > q\n",
])
def test_a_mask_that_allows_nothing_warns(text):
    with pytest.warns(maskspec.MaskSpecWarning, match="allows no") as record:
        mask = _compile(text)
    assert any("2:1: warning" in str(w.message) for w in record)
    assert not mask.dense(1, 1, 40, 40).any()


def test_ordinary_specs_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", maskspec.MaskSpecWarning)
        for f in SPECS.glob("*.mask"):
            maskspec.load(f)


@pytest.mark.parametrize(
    ("decl", "needle", "message", "hint"),
    [
        ("region r[i in 0 .. Q_LEN // 64) = full where kv == i", "Q_LEN // 64",
         "this one reads Q_LEN or KV_LEN", "n: int[B] in [0, 8]"),
        ("region r[i in 0 .. free[b]) = full where kv == i", "free[b]",
         "reads an input with no range of numbers", "declared range"),
        ("region r[i in 0 .. 1000) = full where kv == i", "[i in 0 .. 1000)",
         "has 1000 members, more than 256", "bound it tighter"),
        ("region r[i in 3 .. 3) = full where kv == i", "[i in 3 .. 3)",
         "has no member: [3, 3) is empty", "exceed its start"),
        ("region r[i in q .. 3) = full where kv == i", "q .. 3", "`q` cannot be used", None),
        ("region r[w in 0 .. 3) = full where kv == w", "[w in 0 .. 3)",
         "`w` is already declared as a param", "e.g. `i`"),
        ("region r[kv in 0 .. 3) = full", "[kv in 0 .. 3)", "`kv` is a built-in name", None),
        ("region r[i in 0 .. 3) = full where kv == i\nregion s = r & causal", "r & causal",
         "region `r` is a family", "make this region a family too"),
        ("region r[i in 0 .. 3) = full where kv == j", "j", "unknown name `j`", None),
        ("region r_1 = causal\nregion r[i in 0 .. 3) = full where kv == i", "[i in 0 .. 3)",
         "member 1 of family `r` would be named `r_1`", "rename that region"),
    ],
)
def test_region_family_misuse(decl, needle, message, hint):
    text = f"mask m\nparam w: int = 4\ninput free: int[B]\n{decl}\n"
    err = _error(text)
    assert_points_at(err, text, _at(text, needle))
    assert message in str(err)
    if hint is not None:
        assert hint in _hint(err)
