"""Shared test setup: hypothesis profiles and the shipped specs."""

import os
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():  # run the fused Triton kernels on Triton's CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import maskspec  # after TRITON_INTERPRET: the kernels are defined at import
from maskspec.targets import cute

SPECS = Path(__file__).resolve().parent.parent / "specs"
# Small params so windows, chunks and blocks land inside the random shapes below.
PARAMS = {
    "sliding_window": {"width": 37},
    "sliding_window_with_sinks": {"width": 45, "sinks": 5},
    "chunked_causal": {"size": 48},
    "dflash": {"block": 8},
}

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("MASKSPEC_HYPOTHESIS", "ci"))


FAST_TIER = False  # set when the run deselects the slow tier (`-m "not slow"`)


def pytest_configure(config: pytest.Config) -> None:
    global FAST_TIER
    FAST_TIER = "not slow" in (config.option.markexpr or "")


def examples(n: int) -> int:
    """How many cases a hypothesis suite of ``n`` draws: all in the full suite (CI), an
    eighth in the fast tier, so the edit loop still runs every suite once through."""
    return max(4, n // 8) if FAST_TIER else n


def spec(name: str, **params: int) -> maskspec.CompiledMask:
    return maskspec.load(SPECS / f"{name}.mask", **params)


@pytest.fixture(scope="session")
def eagle3() -> maskspec.CompiledMask:
    return spec("eagle3")


@pytest.fixture
def fake_cutlass(monkeypatch):
    """Just enough of cutlass and flash_attn for the ``cute`` source to execute on CPU."""
    cute_mod = types.ModuleType("cutlass.cute")
    cute_mod.jit = lambda f: f
    cute_mod.TensorSSA = type("TensorSSA", (), {})
    cutlass_mod = types.ModuleType("cutlass")
    cutlass_mod.cute, cutlass_mod.Int32 = cute_mod, int
    utils = types.ModuleType("flash_attn.cute.utils")
    utils.scalar_to_ssa = lambda x, dtype: dtype(x)
    mods = {"cutlass": cutlass_mod, "cutlass.cute": cute_mod, "flash_attn": types.ModuleType(
        "flash_attn"), "flash_attn.cute": types.ModuleType("flash_attn.cute"),
        "flash_attn.cute.utils": utils}
    for k, v in mods.items():
        monkeypatch.setitem(sys.modules, k, v)
    monkeypatch.setattr(cute, "_COMPILED", {})
    return mods
