"""background.Once: the worker that compiles a configuration's kernels while builds go on."""

import threading

import pytest

from maskspec.background import Once


def test_runs_once_per_key_and_reports_when_done():
    once, gate, runs = Once(), threading.Event(), []

    def work(key):
        def fn():
            gate.wait(10)
            runs.append(key)
        return fn

    assert not once.done("a", work("a"))  # started, held at the gate
    assert not once.done("a", work("a"))  # not started again
    gate.set()
    assert once.done("a", work("a"), wait=True)
    assert once.done("b", work("b"), wait=True)
    assert once.done("a", work("a")) and runs == ["a", "b"]


def test_a_failure_is_raised_on_every_call():
    once = Once()

    def fail():
        raise RuntimeError("compile failed")

    with pytest.raises(RuntimeError, match="compile failed"):
        once.done("k", fail, wait=True)
    with pytest.raises(RuntimeError, match="compile failed"):
        once.done("k", fail)
