"""Validation cases: one shape, block size and set of inputs; random ones; and shrinking a
failing one to the smallest case that still fails the same way, so the reproducer a user
gets is one they can read.

Shrinking is greedy, as hypothesis shrinks integers: each step tries smaller values of one
coordinate (the batch, the heads, Q_LEN and KV_LEN together and apart, the block size, each
input back to its default), the biggest cut first, and keeps the first that still fails.
Inputs follow the sizes: each is cut to its declared shape at the new sizes and its values
brought into the new declared ranges (``inputs.sanitized``).
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from maskspec import ir, verify
from maskspec.api import CompiledMask
from maskspec.inputs import sanitized, sizes_of

# Block sizes --random draws from when none is given: flex's default, FA4's, and smaller ones
# that put many blocks (and many edge cases) into small shapes.
RANDOM_BLOCK_SIZES: tuple[tuple[int, int], ...] = (
    (16, 16), (32, 32), (64, 64), (128, 128), (64, 32), (128, 64), (256, 128),
)
SHRINK_TRIES = 200  # validations a shrink may spend


@dataclass
class Case:
    """One validation: shape, block size and inputs — and how to run it again."""

    B: int
    H: int
    Q_LEN: int
    KV_LEN: int
    bs: tuple[int, int]
    inputs: dict[str, Any] = field(default_factory=dict)

    def title(self) -> str:
        return (f"B={self.B} H={self.H} Q_LEN={self.Q_LEN} KV_LEN={self.KV_LEN} "
                f"BLOCK_SIZE={self.bs[0]},{self.bs[1]}")

    def command(self, spec: str, params: Sequence[tuple[str, int]]) -> str:
        """A command line that reruns exactly this case."""
        argv = ["maskspec", "validate", spec, "--q-len", str(self.Q_LEN),
                "--kv-len", str(self.KV_LEN), "--batch", str(self.B), "--heads", str(self.H),
                "--block-size", f"{self.bs[0]},{self.bs[1]}"]
        for k, v in params:
            argv += ["--param", f"{k}={v}"]
        for k, t in self.inputs.items():
            flat = torch.as_tensor(t).flatten().long().tolist()
            argv += ["--input", f"{k}=" + ",".join(map(str, flat))]
        return shlex.join(argv)


def random_case(
    mask: CompiledMask, rng: random.Random, q_max: int, kv_max: int, b_max: int,
    heads: int, bs: tuple[int, int] | None,
) -> Case:
    """A random shape (half of them block- and Q_LEN-aligned) with random values of every input."""
    q_bs, kv_bs = bs or rng.choice(RANDOM_BLOCK_SIZES)
    if rng.random() < 0.5 and q_max >= q_bs and kv_max >= kv_bs:
        q = q_bs * rng.randint(1, q_max // q_bs)
        if kv_max >= q:  # whole rounds of Q_LEN keys
            kv = q * rng.randint(1, kv_max // q)
        else:
            kv = kv_bs * rng.randint(1, kv_max // kv_bs)
    else:
        q, kv = rng.randint(1, q_max), rng.randint(1, kv_max)
    b = rng.randint(1, b_max)
    inputs = verify.random_inputs(mask, b, heads, q, kv, rng)
    return Case(b, heads, q, kv, (q_bs, kv_bs), inputs)


def problems(mask: CompiledMask, case: Case) -> tuple[str | None, list[str]]:
    """Validate one case: how it fails (None: it passes; ``disagree``; or the type of the
    exception it raised) and the problems found (an exception is one, for the reproducer)."""
    try:
        rep = verify.validate(mask, case.B, case.H, case.Q_LEN, case.KV_LEN, case.bs,
                              **case.inputs)
    except Exception as err:
        return type(err).__name__, [f"{type(err).__name__}: {err}"]
    return ("disagree" if rep.problems else None), rep.problems


def shrink(mask: CompiledMask, case: Case, fails: Callable[[Case], bool]) -> tuple[Case, int]:
    """The smallest case reached from ``case`` by single smaller steps for which ``fails``
    holds, and how many cases were tried (at most SHRINK_TRIES)."""
    tries = 0
    improved = True
    while improved and tries < SHRINK_TRIES:
        improved = False
        for smaller in _smaller(mask, case):
            tries += 1
            if fails(smaller):
                case, improved = smaller, True
                break
            if tries >= SHRINK_TRIES:
                break
    return case, tries


def _cuts(n: int, floor: int = 1) -> Iterator[int]:
    """Values below n toward ``floor``, the biggest cut first: floor, n - (n-floor)/2, …, n - 1."""
    d = n - floor
    while d > 0:
        yield n - d
        d //= 2


def _smaller(mask: CompiledMask, case: Case) -> Iterator[Case]:
    """Cases one step smaller than ``case`` (inputs resized to fit), the biggest steps first."""
    for b in _cuts(case.B):
        yield from _resized(mask, case, B=b)
    for h in _cuts(case.H):
        yield from _resized(mask, case, H=h)
    if case.KV_LEN % case.Q_LEN == 0:  # keep whole rounds of Q_LEN keys
        rounds = case.KV_LEN // case.Q_LEN
        for q in _cuts(case.Q_LEN):
            yield from _resized(mask, case, Q_LEN=q, KV_LEN=q * rounds)
        for r in _cuts(rounds):
            yield from _resized(mask, case, KV_LEN=case.Q_LEN * r)
    for q in _cuts(case.Q_LEN):
        yield from _resized(mask, case, Q_LEN=q)
    for kv in _cuts(case.KV_LEN):
        yield from _resized(mask, case, KV_LEN=kv)
    for bs in sorted(RANDOM_BLOCK_SIZES, key=lambda s: s[0] * s[1]):
        if bs[0] * bs[1] < case.bs[0] * case.bs[1]:
            yield replace(case, bs=bs)
    for d in mask.ir.inputs:
        if d.default is not None and d.name in case.inputs:
            yield replace(case, inputs={k: v for k, v in case.inputs.items() if k != d.name})


def _resized(mask: CompiledMask, case: Case, **sizes: int) -> Iterator[Case]:
    """``case`` at new sizes with each input cut to its shape there and its values brought
    into range; nothing where an input would have to grow."""
    new = replace(case, **sizes)
    at = sizes_of(new.B, new.H, new.Q_LEN, new.KV_LEN)
    decls = {d.name: d for d in mask.ir.inputs}
    cut = {}
    for name, value in case.inputs.items():
        t = torch.as_tensor(value)
        shape = [ir.const_value(s, at) for s in decls[name].shape]
        if len(shape) != t.dim() or any(n > m for n, m in zip(shape, t.shape, strict=True)):
            return
        cut[name] = t[tuple(slice(0, n) for n in shape)].clone()
    new.inputs = sanitized(mask.ir, at, cut)
    yield new
