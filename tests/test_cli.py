"""The maskspec command, run as a user runs it (a subprocess), plus in-process exit paths."""

import os
import random
import re
import resource
import shlex
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
from conftest import SPECS
from matplotlib import colors
from matplotlib import image as mpimg
from matplotlib.backends.backend_agg import FigureCanvasAgg
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec import cli, render, verify
from maskspec.cuda import generator

# The console script beside this interpreter (the venv's bin/), found without PATH, so the
# tests pass whether or not the venv is activated (PATH is left out of their environment).
SCRIPT = Path(sysconfig.get_path("scripts")) / "maskspec"
ENV = {**os.environ, "PATH": os.defpath, "PYTHONIOENCODING": "utf-8", "COLUMNS": "120",
       "NO_COLOR": "1"}


def run(*args: object, script: bool = False) -> subprocess.CompletedProcess:
    """Run the maskspec command: the installed console script, or ``python -m maskspec``."""
    exe = [str(SCRIPT)] if script else [sys.executable, "-m", "maskspec"]
    assert SCRIPT.exists() or not script, f"no console script at {SCRIPT} (pip install -e .)"
    return subprocess.run([*exe, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300, encoding="utf-8")


@pytest.fixture
def main(capsys, monkeypatch):
    """The command in this process (no interpreter start-up), with ``run``'s result."""
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("NO_COLOR", "1")

    def call(*args: object) -> subprocess.CompletedProcess:
        code = cli.main([str(a) for a in args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)
    return call


@pytest.mark.slow
def test_validate_eagle3_single_and_random():
    r = run("validate", SPECS / "eagle3.mask", "--q-len", 300, "--kv-len", 1000,
            "--block-size", "64,32", "--input", "seq_len=250", script=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout and "input seq_len = [250]  (given)" in r.stdout
    r = run("validate", SPECS / "eagle3.mask", "--q-len", 400, "--kv-len", 1500, "--random", 5,
            "--seed", 11)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 random cases (--seed 11" in r.stdout and "5 agree, 0 disagree" in r.stdout


def test_validate_causal_random(main):
    r = main("validate", SPECS / "causal.mask", "--q-len", 600, "--kv-len", 600, "--random", 5,
             "--seed", 3)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 agree, 0 disagree" in r.stdout


def test_syntax_error_exits_2_with_position(tmp_path):
    bad = tmp_path / "bad.mask"
    bad.write_text("mask bad\nregion r = causal(\n  offset = )\n")
    r = run("validate", bad, "--q-len", 8, "--kv-len", 8)
    assert r.returncode == 2
    assert f"{bad}:3:12: error: syntax error" in r.stderr  # the `)` where a value belongs
    assert "^" in r.stderr and r.stdout == ""


def _grid_lines(text: str, n: int) -> list[str]:
    """The n grid rows a `show` printed: the characters after each row's index label."""
    rows = re.findall(r"^\s*\d+ ((?:[█▒·]{2})+)$", text, flags=re.M)
    assert len(rows) == n, text
    return rows


def _figures(monkeypatch) -> list:
    """Capture every figure ``show --png`` draws (to read its layout after saving)."""
    drawn: list = []
    real = render.figure

    def keep(*args, **kwargs):
        drawn.append(real(*args, **kwargs))
        return drawn[-1]
    monkeypatch.setattr(render, "figure", keep)
    return drawn


def test_show_prints_grid_and_png_colors(tmp_path, monkeypatch, main):
    r = main("show", SPECS / "causal.mask", "--q-len", 512, "--kv-len", 512, "--block-size", 128)
    assert r.returncode == 0, r.stdout + r.stderr
    f, p, e = (render.CHARS[c] for c in (render.FULL, render.PARTIAL, render.EMPTY))
    # Causal, 4×4 blocks of 128: FULL below the diagonal, PARTIAL on it, EMPTY above.
    assert _grid_lines(r.stdout, 4) == [f * i + p + e * (3 - i) for i in range(4)]
    assert "FULL" in r.stdout and "PARTIAL" in r.stdout and "EMPTY" in r.stdout

    out = tmp_path / "causal.png"
    figs = _figures(monkeypatch)
    assert cli.main(["show", "causal", "--q-len", "512", "--kv-len", "512", "--png",
                     str(out)]) == 0
    img = mpimg.imread(out)
    to_pixels = figs[0].axes[0].transData.transform

    def pixel(y: float, x: float) -> tuple[float, ...]:
        px, py = to_pixels((x, y))
        return tuple(img[int(img.shape[0] - py), int(px), :3])

    expect = {(0, 3): render.EMPTY, (1, 1): render.PARTIAL, (2, 0): render.FULL,
              (3, 3): render.PARTIAL, (3, 1): render.FULL, (1, 2): render.EMPTY}
    for (i, j), cls in expect.items():
        assert pixel(i + 0.5, j + 0.5) == pytest.approx(
            colors.to_rgb(render.PALETTE[cls]), abs=2 / 255), ((i, j), render.NAMES[cls])
    # A line between the two FULL blocks of row 3: neighbouring blocks stay apart.
    green = sum(colors.to_rgb(render.PALETTE[render.FULL]))
    assert sum(pixel(3.5, 1.0)) > green + 0.5


def _overlaps(boxes: list) -> list:
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


def _renderer(fig):
    """A renderer with ``fig`` laid out and drawn as it was saved."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _check_layout(fig) -> None:
    """Nothing written on the picture overlaps: tick labels along each axis, titles, axes."""
    renderer = _renderer(fig)
    for ax in fig.axes:
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in labels
                     if t.get_visible() and t.get_text()]
            assert not _overlaps(boxes), [t.get_text() for t in labels]
    titled = [ax.title for ax in fig.axes if ax.get_title()] + [fig._suptitle]
    assert not _overlaps([t.get_window_extent(renderer) for t in titled])
    drawn = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.axison]
    assert not _overlaps(drawn)


@pytest.mark.parametrize(("spec", "q", "kv", "bs", "more"), [
    ("causal", 1, 1, "128", []),                  # one block
    ("document_causal", 2048, 2048, "64", []),    # neighbouring PARTIAL blocks
    ("eagle3", 49152, 245760, "128", ["--input", "seq_len=40000"]),  # 384 × 1920 blocks
    ("sliding_window", 131072, 131072, "16", []),  # 8192 × 8192 blocks, pooled
])
def test_pictures_read_at_any_size(spec, q, kv, bs, more, tmp_path, monkeypatch):
    figs = _figures(monkeypatch)
    start, rss = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert cli.main(["show", spec, "--q-len", str(q), "--kv-len", str(kv), "--block-size", bs,
                     "--seed", "0", "--png", str(tmp_path), *more]) == 0
    assert time.perf_counter() - start < 60
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss  # peak growth, if any
    assert grown_kb < 2 * 2**20, f"{grown_kb / 2**20:.1f} GB more at the peak"
    img = mpimg.imread(tmp_path / f"{spec}.png")
    assert img.shape[:2] == (750, 1300)  # a fixed size, whatever the grid's
    fig = figs[0]
    _check_layout(fig)
    grid = fig.axes[0]
    markers = [ln for ln in grid.lines if ln.get_marker() == "s"]
    zooms = [ax for ax in fig.axes[1:] if ax.get_title()]
    assert len(markers) == len(zooms) == (2 if spec == "eagle3" else 1)
    renderer = _renderer(fig)
    for m in markers:  # each zoomed block is marked visibly, however small a block is drawn
        box = m.get_window_extent(renderer)
        assert box.width >= 10 and grid.bbox.contains(*box.get_points().mean(0))
    notes = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "FULL" in notes and ("input" in notes) == (spec in ("eagle3", "document_causal"))


def test_show_randomizes_missing_inputs_and_says_so(main):
    r = main("show", SPECS / "eagle3.mask", "--q-len", 300, "--kv-len", 900, "--block-size", 64,
             "--seed", 5, "--batch", 2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"input seq_len = \[\d+, \d+\]  \(random, --seed 5\)", r.stdout)
    assert len(_grid_lines(r.stdout, 10)) == 10  # two different grids, one per batch element
    assert re.findall(r"^b=\d h=0$", r.stdout, flags=re.M) == ["b=0 h=0", "b=1 h=0"]


@pytest.mark.slow
def test_show_draws_each_different_batch_element_or_the_chosen_one():
    args = ("show", SPECS / "eagle3.mask", "--q-len", 300, "--kv-len", 900, "--block-size", 64,
            "--batch", 3, "--input", "seq_len=300,100,300")
    empty = set(render.CHARS[render.EMPTY])
    every, one = (run(*args, *at) for at in ((), ("--at", "1,0")))
    assert every.returncode == one.returncode == 0, every.stderr + one.stderr
    # Samples 0 and 2 are alike; sample 1 has 100 valid queries: row blocks from 128 on see
    # nothing. Both grids are drawn, each once, saying which samples it is.
    assert re.findall(r"^b=\d h=0.*$", every.stdout, flags=re.M) == [
        "b=0 h=0 (the same grid: b=2 h=0)", "b=1 h=0"]
    rows = _grid_lines(every.stdout, 10)
    assert all(set(row) != empty for row in rows[:5])
    assert [set(row) == empty for row in rows[5:]] == [False] * 2 + [True] * 3
    assert _grid_lines(one.stdout, 5) == rows[5:] and "b=1 h=0" in one.stdout
    bad = run(*args, "--at", "3,0")
    assert bad.returncode == 2 and "--at 3,0 is outside the batch (B=3)" in bad.stderr


def test_explain_regions_and_numbers(main):
    q, kv, bs, seq = 1000, 4500, (256, 128), 900
    r = main("explain", SPECS / "eagle3.mask", "--q-len", q, "--kv-len", kv,
             "--block-size", "256,128", "--input", f"seq_len={seq}")
    assert r.returncode == 0, r.stdout + r.stderr
    for meaning in ("causal  →  kv in [0, q + 1)", "kv ≡ q (mod Q_LEN): one key per round",
                    "where kv < Q_LEN  →  key range: kv < Q_LEN",
                    "q < seq_len[b]  →  whole rows", "kv % Q_LEN < seq_len[b]"):
        assert meaning in r.stdout, meaning
    # Numbers against torch's own block mask and the dense meaning.
    mask = maskspec.load(SPECS / "eagle3.mask")
    seq_len = torch.tensor([seq])
    ref = create_block_mask(mask.mask_mod(B=1, H=1, Q_LEN=q, KV_LEN=kv, seq_len=seq_len),
                            1, 1, q, kv, device="cpu", BLOCK_SIZE=bs)
    full = int(verify.block_set(ref.full_kv_num_blocks, ref.full_kv_indices).sum())
    part = int(verify.block_set(ref.kv_num_blocks, ref.kv_indices).sum())
    total = 4 * 36
    density = float(mask.dense(1, 1, q, kv, seq_len=seq_len).float().mean())
    assert re.search(rf"FULL\s+{full} blocks", r.stdout)
    assert re.search(rf"PARTIAL\s+{part} blocks", r.stdout)
    assert re.search(rf"EMPTY\s+{total - full - part} blocks", r.stdout)
    assert f"(FULL + PARTIAL blocks): {(full + part) / total:.2%}" in r.stdout
    assert f"allowed (q, kv) pairs, exact: {density:.4%}" in r.stdout


OVERLAPPING = """
mask overlapping
input prefix: int[B] in [0, KV_LEN] = 0
region bidir = full where kv < prefix[b]
region past = causal
region sinks = causal where kv < 5
region near = window(left = 7, right = 3)
"""


@pytest.mark.parametrize("seed", range(4))
def test_block_stats_density_counts_overlaps_once(seed):
    mask = maskspec.compile(OVERLAPPING)
    rng = random.Random(seed)
    b, q, kv = rng.randint(1, 3), rng.randint(1, 300), rng.randint(1, 400)
    inputs = verify.random_inputs(mask, b, 1, q, kv, rng)
    stats = cli.block_stats(mask, {"B": b, "H": 1, "Q_LEN": q, "KV_LEN": kv}, inputs, (32, 16))
    allowed = int(mask.dense(b, 1, q, kv, **inputs).sum())
    assert round(stats["density"] * b * q * kv) == allowed


def _failing_validate(calls: list):
    def fake(mask, B, H, Q_LEN, KV_LEN, BLOCK_SIZE=128, **inputs):
        calls.append((B, H, Q_LEN, KV_LEN, BLOCK_SIZE, {k: torch.as_tensor(v) for k, v in
                                                        inputs.items()}))
        rep = verify.Report(Q_LEN, KV_LEN, BLOCK_SIZE, full=1, partial=2, empty=3)
        rep.problems.append("kv_indices[b=0, h=0, q_block=1] block 2: maskspec says PARTIAL, "
                            "create_block_mask says not PARTIAL")
        return rep
    return fake


def test_validate_failure_exits_1_and_names_block(monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(verify, "validate", _failing_validate(calls))
    code = cli.main(["validate", str(SPECS / "eagle3.mask"), "--q-len", "256", "--kv-len", "512"])
    assert code == 1 and len(calls) == 1
    out = capsys.readouterr().out
    assert "DISAGREE" in out and "q_block=1] block 2" in out


def test_random_failure_prints_a_reproducer_that_reruns_the_case(monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(verify, "validate", _failing_validate(calls))
    code = cli.main(["validate", str(SPECS / "eagle3.mask"), "--q-len", "300", "--kv-len", "900",
                     "--random", "2", "--seed", "4", "--batch", "3"])
    assert code == 1
    lines = [x for x in capsys.readouterr().out.splitlines() if "reproduce: " in x]
    assert len(lines) == 2
    argv = shlex.split(lines[1].split("reproduce: ", 1)[1])
    assert argv[:2] == ["maskspec", "validate"]
    validated = len(calls)
    assert cli.main(argv[1:]) == 1 and len(calls) == validated + 1
    b, h, q, kv, bs, inputs = calls[-1]  # the rerun validates the case reported, as it was
    same = [c for c in calls[:-1] if c[:4] == (b, h, q, kv) and tuple(c[4]) == tuple(bs)]
    assert same and same[-1][5].keys() == inputs.keys()
    assert all(torch.equal(same[-1][5][k], inputs[k]) for k in inputs)


def _empty_from(q_min: int, kv_min: int):
    """A build bug for the shrinker to find: every block vanishes once Q_LEN ≥ q_min and
    KV_LEN ≥ kv_min (validation then disagrees wherever the mask allows anything)."""
    real = maskspec.CompiledMask.block_mask

    def buggy(self, b, h, q_len, kv_len, *args, **kwargs):
        bm = real(self, b, h, q_len, kv_len, *args, **kwargs)
        if q_len >= q_min and kv_len >= kv_min:
            bm.full_kv_num_blocks.zero_()
            bm.kv_num_blocks.zero_()
        return bm
    return buggy


def test_random_failures_shrink_to_the_smallest_failing_case(monkeypatch, capsys):
    monkeypatch.setattr(maskspec.CompiledMask, "block_mask", _empty_from(40, 60))
    code = cli.main(["validate", "causal", "--q-len", "300", "--kv-len", "400", "--random", "3",
                     "--seed", "2", "--batch", "3", "--heads", "2"])
    out = capsys.readouterr().out
    assert code == 1 and "DISAGREE" in out
    # The smallest case: one batch element and head, the smallest block size, and sizes
    # where one query or key fewer would pass.
    shrunk = re.findall(r"shrunk to (.*) \(\d+ cases tried\)", out)
    assert shrunk and set(shrunk) == {"B=1 H=1 Q_LEN=40 KV_LEN=60 BLOCK_SIZE=16,16"}
    argv = shlex.split(out.split("reproduce: ")[1].splitlines()[0])
    assert argv[argv.index("--q-len") + 1] == "40" and cli.main(argv[1:]) == 1


def test_shrinking_cuts_inputs_to_the_smaller_shape(monkeypatch, capsys):
    monkeypatch.setattr(maskspec.CompiledMask, "block_mask", _empty_from(100, 100))
    code = cli.main(["validate", "document_causal", "--q-len", "400", "--kv-len", "400",
                     "--random", "3", "--seed", "3", "--batch", "3", "--block-size", "32"])
    out = capsys.readouterr().out
    assert code == 1
    before = [tuple(map(int, m)) for m in re.findall(r"DISAGREE at B=(\d+) H=1 Q_LEN=(\d+)", out)]
    after = [line.split("reproduce: ")[1] for line in out.splitlines() if "reproduce: " in line]
    assert len(before) == len(after) >= 1
    for (b0, q0), cmd in zip(before, after, strict=True):
        argv = shlex.split(cmd)
        q, b = int(argv[argv.index("--q-len") + 1]), int(argv[argv.index("--batch") + 1])
        assert b == 1 and 100 <= q < q0 if b0 > 1 else q <= q0
        ids = [int(v) for v in argv[argv.index("--input") + 1].split("=")[1].split(",")]
        assert len(ids) == b * q and ids == sorted(ids)  # cut to [B, Q_LEN], still in order
        assert cli.main(argv[1:]) == 1


def test_progress_without_a_terminal_prints_plain_lines(monkeypatch, capsys):
    monkeypatch.setattr(cli, "PLAIN_PROGRESS_S", 0.0)
    code = cli.main(["validate", "causal", "--q-len", "64", "--kv-len", "64", "--random", "3",
                     "--seed", "1"])
    err = capsys.readouterr().err
    assert code == 0
    assert re.findall(r"validating: (\d)/3 cases, 0 disagree", err) == ["1", "2"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--input", "seq_len=1,2,3"], "got 3 values"),
        (["--input", "seqlen=4"], "did you mean `seq_len`"),
        (["--input", "seq_len=999"], "must lie in [0, 256]"),
        (["--input", "seq_len=x"], "'x' is not an integer"),
        (["--input", "seq_len=99999999999999999999"], "--input seq_len: '9999"),
        (["--param", "nope=1"], "has no param `nope`"),
        (["--q-len", "1000000", "--kv-len", "5000000"], "GiB, more than this machine"),
    ],
)
def test_bad_arguments_exit_2(argv, needle, capsys):
    code = cli.main(["validate", str(SPECS / "eagle3.mask"), "--q-len", "256", "--kv-len", "512",
                     *argv])
    assert code == 2
    assert needle in capsys.readouterr().err


def test_compile_emits_the_generated_triton_kernel(capsys):
    """`compile --emit triton` prints the CUDA build's count kernel: valid Python, one block
    per region, the same text the builder runs."""
    spec = SPECS / "document_causal.mask"
    assert cli.main(["compile", str(spec), "--emit", "triton"]) == 0
    text = capsys.readouterr().out
    assert text == generator.source(maskspec.load(spec).ir)
    compile(text, "kernel.py", "exec")
    assert "def count_kernel(" in text and "st_doc" in text  # document edges: their runs read


def test_internal_errors_exit_3_in_one_line_and_debug_shows_them(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(verify, "validate", broken)
    argv = ["validate", "eagle3", "--q-len", "64", "--kv-len", "128"]
    assert cli.main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("internal error: RuntimeError: boom") and "--debug" in err
    assert "Traceback" not in err and len(err.splitlines()) <= 2
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", *argv])


def test_spec_paths_that_are_not_files_exit_2(tmp_path, capsys):
    fifo = tmp_path / "pipe.mask"
    os.mkfifo(fifo)  # reading it would block forever
    for path in (tmp_path, fifo):
        assert cli.main(["show", str(path), "--q-len", "64", "--kv-len", "64"]) == 2
        assert "give a .mask file" in capsys.readouterr().err


def test_empty_masks_print_a_warning(tmp_path, capsys):
    f = tmp_path / "w.mask"
    f.write_text("mask w\nparam width: int = 4\nregion r = window(left = width)\n")
    assert cli.main(["show", str(f), "--q-len", "64", "--kv-len", "64", "--param",
                     "width=-5"]) == 0
    assert "3:1: warning: region `r` allows no" in capsys.readouterr().err


def test_png_paths_report_the_file_written(tmp_path, capsys):
    base = ["show", "eagle3", "--q-len", "256", "--kv-len", "512", "--png"]
    assert cli.main([*base, str(tmp_path)]) == 0
    assert f"wrote {tmp_path / 'eagle3.png'}" in capsys.readouterr().out
    assert cli.main([*base, str(tmp_path / "pic")]) == 0
    assert f"wrote {tmp_path / 'pic.png'}" in capsys.readouterr().out
    assert (tmp_path / "eagle3.png").is_file() and (tmp_path / "pic.png").is_file()
