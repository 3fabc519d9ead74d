"""Value checks read later (``maskspec.deferred``), as CUDA builds run them, exercised on the
CPU by letting CPU builds defer too: a failure raises the host check's message at a later
build or at ``maskspec.wait_checks()``, exactly once, naming the build; the failing build
itself agrees with its mask_mod; a checked build defers exactly what the host checks refuse.
"""

from __future__ import annotations

import random
import re
import threading

import pytest
import torch
from conftest import examples
from helpers import SPECS_WITH_INPUTS as SPECS
from helpers import hostile
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec import deferred
from maskspec import inputs as inputs_stage
from maskspec.fast import Builder
from maskspec.verify import first_difference, random_inputs


@pytest.fixture
def later(monkeypatch):
    """CPU builds check on the 'device' and report later; no report is left behind."""
    monkeypatch.setattr(inputs_stage, "DEFERRED_DEVICES", {"cpu", "cuda"})
    monkeypatch.setattr(deferred, "_RINGS", {})
    yield
    maskspec.wait_checks()


def _host_error(mask, b, q, kv, inputs) -> str | None:
    try:
        mask.block_mask(b, 1, q, kv, "cpu", 16, **inputs)
    except ValueError as err:
        return str(err)
    return None


@settings(max_examples=examples(40), deadline=None)
@given(st.sampled_from(SPECS), st.integers(1, 2), st.integers(1, 120), st.integers(1, 120),
       st.integers(0, 10**6), st.booleans())
def test_deferred_checks_refuse_what_the_host_checks_refuse(spec, b, q, kv, seed, bad):
    """Same message as the host check (plus which build), raised once, at wait_checks; the
    build itself agrees with its mask_mod."""
    mask = maskspec.load(spec)
    inputs = hostile(mask, b, q, kv, seed) if bad else \
        random_inputs(mask, b, 1, q, kv, random.Random(seed))
    want = _host_error(mask, b, q, kv, inputs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inputs_stage, "DEFERRED_DEVICES", {"cpu"})
        mp.setattr(deferred, "_RINGS", {})
        bm = mask.block_mask(b, 1, q, kv, "cpu", 16, **inputs)
        ref = create_block_mask(bm.mask_mod, b, 1, q, kv, device="cpu", BLOCK_SIZE=16)
        assert first_difference(bm, ref) is None
        if want is None:
            maskspec.wait_checks()
        else:
            with pytest.raises(ValueError, match=re.escape(want) + ".*earlier build of"):
                maskspec.wait_checks()
        maskspec.wait_checks()  # nothing twice


def test_the_next_build_raises_then_builds_go_on(later):
    mask = maskspec.load("eagle3")
    mask.block_mask(2, 1, 256, 1280, "cpu", 128, seq_len=torch.tensor([100, 5000]))
    with pytest.raises(ValueError, match=r"seq_len\[1\] = 5000 .* B=2, H=1, Q_LEN=256"):
        mask.block_mask(2, 1, 256, 1280, "cpu", 128, seq_len=torch.tensor([100, 200]))
    mask.block_mask(2, 1, 256, 1280, "cpu", 128, seq_len=torch.tensor([100, 200]))


def test_a_report_says_when_the_tensors_changed_since(later):
    """The message is the host check's on the same tensors; changed since, it says so."""
    mask, lens = maskspec.load("eagle3"), torch.tensor([100, 5000])
    mask.block_mask(2, 1, 256, 1280, "cpu", 128, seq_len=lens)
    lens[1] = 7
    with pytest.raises(ValueError, match="have changed since"):
        maskspec.wait_checks()


def test_a_full_ring_waits_for_its_oldest_slot(later, monkeypatch):
    """Past RING pending checks a build reads the oldest first: every report still comes."""
    monkeypatch.setattr(deferred, "RING", 3)
    seen = []
    for i in range(7):
        deferred.watch(torch.tensor(i % 2, dtype=torch.int32), lambda i=i: seen.append(i))
    maskspec.wait_checks()
    assert seen == [1, 3, 5]


def test_checks_watched_from_many_threads_are_all_reported(later, monkeypatch):
    """Builds on several threads share the ring: no failed check is dropped or overwritten,
    even with the ring filling up (each report is seen exactly once)."""
    monkeypatch.setattr(deferred, "RING", 5)
    seen: list[int] = []

    def work(t: int) -> None:
        for i in range(200):
            n = t * 1000 + i
            deferred.watch(torch.tensor(int(n % 3 == 0), dtype=torch.int32),
                           lambda n=n: seen.append(n))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    maskspec.wait_checks()
    assert sorted(seen) == [t * 1000 + i for t in range(6) for i in range(200)
                            if (t * 1000 + i) % 3 == 0]


def test_builder_checks_like_the_plain_call(later):
    mask = maskspec.load("document_causal")
    ids = torch.tensor([[0, 0, 3, 1, 1, 4]])
    Builder(mask, 2)(1, 1, 6, 6, "cpu", doc=ids)
    with pytest.raises(ValueError, match=r"doc\[0, 3\] = 1 follows a larger id"):
        maskspec.wait_checks()
    Builder(mask, 2, check_inputs=False)(1, 1, 6, 6, "cpu", doc=ids)


def test_checked_build_inside_torch_compile_reports_later(later):
    """The build op checks on the 'device' too: no graph break, the error comes after."""
    mask = maskspec.load("eagle3")
    step = torch.compile(lambda lens: mask.block_mask(2, 1, 128, 640, "cpu", 64, seq_len=lens),
                         fullgraph=True, backend="eager")
    step(torch.tensor([10, 20]))
    maskspec.wait_checks()
    step(torch.tensor([10, 9999]))
    with pytest.raises(ValueError, match=r"seq_len\[1\] = 9999"):
        maskspec.wait_checks()
