"""Every code block of the README runs as written (on a CPU: ``cuda`` swapped, as listed), so
the README cannot drift from the code.

Shell blocks run command by command; the Python blocks run in order in one namespace (FA4's
through stand-ins for cutlass and flash_attn, which need a GPU); the spec block must be the
shipped spec; the error block must be the message maskspec prints; the pipeline diagram
must name files that exist. A block of a kind with no check here fails the first test.
"""

import ast
import inspect
import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from conftest import SPECS, spec
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

import maskspec
from maskspec.verify import first_difference

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", README, re.S)]
SCRIPTS = Path(sysconfig.get_path("scripts"))
CI = (ROOT / ".ci" / "run").read_text()
# How the Python blocks run on a CPU: each swap must apply somewhere (or it is stale).
SWAPS = [
    ('"cuda"', '"cpu"'),
    ("cuda_graph=True", "cuda_graph=False"),  # CUDA graphs need a GPU
    ('device="cpu", seq_len=lengths)', 'device="cpu", arch=90, seq_len=lengths)'),  # FA4: Hopper
]


def kind(lang: str, body: str) -> str:
    if lang in ("bash", "python", "diff"):
        return lang
    if body.startswith("# specs/"):
        return "spec"
    if ": error: " in body.splitlines()[0]:
        return "error"
    if "─▶" in body:
        return "pipeline"
    return "unknown"


def blocks(k: str) -> list[str]:
    return [body for lang, body in BLOCKS if kind(lang, body) == k]


def test_every_block_has_a_check():
    assert BLOCKS and all(kind(lang, body) != "unknown" for lang, body in BLOCKS)


def _commands() -> list[str]:
    return [cmd.strip() for body in blocks("bash") for line in body.splitlines()
            for cmd in line.split(" && ") if cmd.strip()]


def _slow(cmd: str) -> list:
    """The commands that start a process with torch (5-10 s each) are in the slow tier."""
    return [pytest.mark.slow] if cmd.startswith("maskspec") else []


@pytest.mark.parametrize("cmd", [pytest.param(c, marks=_slow(c)) for c in _commands()])
def test_shell_commands_run(cmd, tmp_path):
    argv = shlex.split(cmd)
    if argv[:2] == ["pip", "install"]:  # what CI installs, in the same words
        assert all(a in CI.replace('".[test]"', ". .[test]") for a in argv[2:]), cmd
        return
    if argv[:3] == ["python", "-m", "pytest"]:  # the suite this test is part of: CI runs it
        assert cmd in CI
        return
    assert argv[0] in ("maskspec", "ruff"), f"no way to run {cmd!r} here"
    cwd = ROOT if argv[0] == "ruff" else tmp_path
    if cwd == tmp_path:
        (tmp_path / "specs").symlink_to(SPECS)
    r = subprocess.run([str(SCRIPTS / argv[0]), *argv[1:]], cwd=cwd, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def _cpu(source: str, used: set[str]) -> str:
    for old, new in SWAPS:
        if old in source:
            used.add(old)
            source = source.replace(old, new)
    return source


def _fake_flash_attn_func(modules: dict):
    """FA4's entry point, as far as the README's call reaches it: it takes exactly what
    ``fa4(...).kwargs()`` gives and returns ``(out, lse)``."""
    def flash_attn_func(q, k, v, *, mask_mod, aux_tensors, block_sparse_tensors,
                        block_sparse_tensors_bwd):
        assert callable(mask_mod) and all(t.dtype == torch.int32 for t in aux_tensors)
        assert block_sparse_tensors.mask_block_cnt.shape[:2] == q.shape[:2]
        assert block_sparse_tensors_bwd.mask_block_cnt.dim() == 3
        return torch.zeros_like(q), torch.zeros(q.shape[:-1])
    modules["flash_attn.cute"].flash_attn_func = flash_attn_func


def test_python_blocks_run(fake_cutlass):
    _fake_flash_attn_func(fake_cutlass)
    used: set[str] = set()
    ns: dict = {}
    for body in blocks("python"):
        exec(compile(_cpu(body, used), "README.md", "exec"), ns)
    assert used == {old for old, _ in SWAPS}, "a swap no longer applies: update SWAPS"
    bm, out = ns["bm"], ns["out"]
    assert isinstance(bm, BlockMask) and isinstance(ns["build"](
        ns["B"], ns["H"], ns["Q_LEN"], ns["KV_LEN"], "cpu", seq_len=ns["lengths"]), BlockMask)
    assert out.shape == ns["q"].shape and torch.isfinite(out[:, :, :700].float()).all()
    ref = create_block_mask(bm.mask_mod, ns["B"], ns["H"], ns["Q_LEN"], ns["KV_LEN"], "cpu")
    assert first_difference(bm, ref) is None


def test_diff_blocks_import_and_call_what_exists():
    """A diff's added lines: each import works, and each call of an imported function binds
    to its signature."""
    for body in blocks("diff"):
        added = "\n".join(line[1:] for line in body.splitlines() if line.startswith("+"))
        tree, ns = ast.parse(added), {}
        imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        exec(compile(ast.Module(imports, []), "README.md", "exec"), ns)
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id in ns]
        assert calls, body
        for call in calls:
            inspect.signature(ns[call.func.id]).bind(
                *call.args, **{k.arg: k.value for k in call.keywords})


def test_spec_block_is_the_shipped_spec():
    (body,) = blocks("spec")
    def code(text: str) -> list[str]:  # the lines without comments (the README's are shorter)
        return [" ".join(x.split("#")[0].split()) for x in text.splitlines() if x.split("#")[0]]
    assert code(body) == code((SPECS / "eagle3.mask").read_text())
    ours, theirs = maskspec.compile(body, "README.md"), spec("eagle3")
    lens = torch.tensor([40, 17])
    assert torch.equal(ours.dense(2, 1, 40, 120, seq_len=lens),
                       theirs.dense(2, 1, 40, 120, seq_len=lens))


def test_error_block_is_what_maskspec_prints():
    (body,) = blocks("error")
    where, line = body.splitlines()[:2]
    path, row = re.match(r"(\S+?):(\d+):\d+: error", where).groups()
    source = "mask m\n" * (int(row) - 1) + line.strip() + "\n"
    with pytest.raises(maskspec.MaskSpecError) as err:
        maskspec.compile(source, path)
    assert str(err.value) == body.rstrip("\n")


def test_pipeline_names_files_that_exist():
    (body,) = blocks("pipeline")
    names = re.findall(r"\b(?:[a-z_]+/)+[a-z_0-9*]+(?:\.py)?|\b[a-z_0-9]+\.py\b", body)
    assert names
    for name in names:
        path = name if name.endswith((".py", "*")) or name.startswith("specs/") else name + ".py"
        root = ROOT if name.startswith("specs/") else ROOT / "maskspec"
        assert list(root.glob(path)) or (root / name).is_dir(), name


def test_readme_python_runs_without_the_repository_on_the_path(tmp_path):
    """The examples load shipped specs by name: they work from any directory."""
    code = "import maskspec; print(maskspec.load('eagle3').name)"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "eagle3", r.stderr
