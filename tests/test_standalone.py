"""`maskspec compile --emit python`: a module needing only torch, building maskspec's masks."""

import ast
import importlib.util
import random
import subprocess
import sys

import pytest
import torch
from conftest import SPECS, spec

from maskspec.standalone import python_module
from maskspec.verify import PAIRS, random_inputs

CASES = ["eagle3", "document_causal", "dflash", "per_head_window", "sliding_window_with_sinks",
         "tree", "natten_tiled"]  # the last two read conditions one side at a time


def _module(name: str, tmp_path):
    path = tmp_path / f"{name}_mask.py"
    path.write_text(python_module(spec(name).ir))
    loader = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    loader.loader.exec_module(module)
    return module, path


@pytest.mark.parametrize("name", CASES)
def test_standalone_equals_maskspec(name, tmp_path):
    module, path = _module(name, tmp_path)
    top = {a.name.split(".")[0] for n in ast.walk(ast.parse(path.read_text()))
           if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom) and n.module}
    assert top - set(sys.stdlib_module_names) == {"torch"}
    mask = spec(name)
    rng = random.Random(name)
    for _ in range(10):
        q, kv = rng.randint(1, 300), rng.randint(1, 900)
        b, h, bs = rng.randint(1, 2), rng.randint(1, 3), rng.choice([16, 32, (64, 32)])
        inputs = random_inputs(mask, b, h, q, kv, rng)
        ours = mask.block_mask(b, h, q, kv, "cpu", bs, **inputs)
        theirs = module.make_block_mask(b, h, q, kv, "cpu", bs, **inputs)
        for pair in PAIRS:
            for attr in pair:
                assert torch.equal(getattr(ours, attr), getattr(theirs, attr)), (attr, q, kv)
        mm = module.make_mask_mod(B=b, H=h, Q_LEN=q, KV_LEN=kv, **inputs)
        dense = mask.dense(b, h, q, kv, **inputs)
        idx = [torch.randint(0, n, (64,)) for n in (b, h, q, kv)]
        assert torch.equal(torch.stack([mm(*i) for i in zip(*idx, strict=True)]),
                           dense[idx[0], idx[1], idx[2], idx[3]])


@pytest.mark.slow
def test_standalone_runs_without_maskspec(tmp_path):
    path = tmp_path / "eagle3_mask.py"
    subprocess.run([sys.executable, "-m", "maskspec", "compile", str(SPECS / "eagle3.mask"),
                    "-o", str(path)], check=True, capture_output=True)
    code = (
        "import sys; sys.modules['maskspec'] = None\n"
        "import torch, eagle3_mask as m\n"
        "bm = m.make_block_mask(2, 1, 1000, 4500, 'cpu', (256, 128), seq_len=[1000, 700])\n"
        "print(bm.kv_num_blocks.tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                         capture_output=True, text=True)
    want = spec("eagle3").block_mask(2, 1, 1000, 4500, "cpu", (256, 128), seq_len=[1000, 700])
    assert out.stdout.strip() == str(want.kv_num_blocks.tolist())


def test_standalone_refuses_what_maskspec_refuses(tmp_path):
    """B=0 is an error in both (None means 1, as in create_block_mask)."""
    module, _ = _module("causal", tmp_path)
    for build in (spec("causal").block_mask, module.make_block_mask):
        with pytest.raises(ValueError, match="B must be a positive int, got 0"):
            build(0, 1, 64, 64, "cpu", 16)
        assert build(None, None, 64, 64, "cpu", 16).kv_num_blocks.shape[:2] == (1, 1)


def test_standalone_signatures_mirror_maskspec(tmp_path):
    """make_mask_mod takes keywords, as CompiledMask.mask_mod, and asks for the sizes the
    mask uses."""
    module, _ = _module("eagle3", tmp_path)
    with pytest.raises(TypeError):
        module.make_mask_mod(64, 128)  # positional sizes, the old signature
    with pytest.raises(ValueError, match="uses Q_LEN"):
        module.make_mask_mod(KV_LEN=128)
    mm = module.make_mask_mod(B=1, Q_LEN=64, KV_LEN=128)
    zero = torch.zeros((), dtype=torch.long)
    assert bool(mm(zero, zero, zero + 5, zero + 64 + 5))  # q's own slot in the first draft
    assert not bool(mm(zero, zero, zero, zero + 1))  # a later context key
