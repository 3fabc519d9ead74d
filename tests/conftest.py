"""Shared test setup: hypothesis profiles and the shipped specs."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():  # run the fused Triton kernels on Triton's CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import maskspec  # after TRITON_INTERPRET: the kernels are defined at import

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


def spec(name: str, **params: int) -> maskspec.CompiledMask:
    return maskspec.load(SPECS / f"{name}.mask", **params)


@pytest.fixture(scope="session")
def eagle3() -> maskspec.CompiledMask:
    return spec("eagle3")
