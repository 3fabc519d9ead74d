"""Where each GPU build of the build table spends its device time, kernel by kernel.

    python benchmarks/profile_kernels.py [--only 128K] [--rows 12] [--timeline]

For every case of ``bench_build.cases("cuda")`` (and FA4's tensors of causal and
document_causal at Q=8192, H=8), profiles five plain calls with their graphs off
(``graphs.off()``: the kernels a graph replays, launched one by one) and prints the kernels
by CUDA time, then the CUDA-event time of a graph replay (``fast.Builder``) for comparison.
``--timeline``: instead, one plain call with its graph on, unchecked and checked, each
device activity (kernels, copies) at its start and with its length, µs from the first.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from bench_build import Case, cases  # run as a script: benchmarks/ is on the path
from torch.profiler import ProfilerActivity, profile

import maskspec
from maskspec.cuda import dispatch, graphs


def _fa4_cases() -> list[tuple[str, Case]]:
    """FA4's block-sparse tensors at B=1, H=8, Q=KV=8192."""
    doc = (torch.arange(8192) // 1000).view(1, -1)  # bench_fa4_tensors' documents
    return [("fa4 causal 8192", Case("", "causal", 1, 8192, [8192])),
            ("fa4 document_causal 8192",
             Case("", "document_causal", 1, 8192, [8192], lambda d: {"doc": doc.to(d)}))]


def _build(case: Case, fa4: bool, dev: torch.device, check: bool = False
           ) -> Callable[[], Any]:
    """One plain call of the case (all its KV_LENs)."""
    mask, inputs = maskspec.load(case.spec), case.inputs(dev)
    if fa4:
        return lambda: mask.fa4_block_sparse(case.B, 8, case.q, case.kvs[0], dev, arch=90,
                                             check_inputs=check, **inputs)
    return lambda: [mask.block_mask(case.B, 1, case.q, kv, dev, check_inputs=check, **inputs)
                    for kv in case.kvs]


def _print_timeline(prof: Any) -> None:
    """Each device activity of one profiled call: start and length (µs), name."""
    acts = sorted((e for e in prof.events() if e.device_type.name == "CUDA"),
                  key=lambda e: e.time_range.start)
    if not acts:
        return
    t0 = acts[0].time_range.start
    for e in acts:
        print(f"  at {e.time_range.start - t0:7.1f} us  {e.time_range.elapsed_us():6.1f} us  "
              f"{e.name[:90]}")
    print(f"  span {acts[-1].time_range.end - t0:.1f} us")


def event_ms(fn: Callable[[], Any], n: int = 50) -> float:
    """Mean CUDA-event ms of fn over n back-to-back calls, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def profiled(fn: Callable[[], Any], builds: int = 5) -> Any:
    """torch.profiler's CUDA record of ``builds`` calls of fn, after three warm-up calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(builds):
            fn()
        torch.cuda.synchronize()
    return prof


def _print_kernels(prof: Any, builds: int, rows: int) -> None:
    """The kernels taking most device time: µs and launches per build, name."""
    events = sorted((e for e in prof.key_averages() if e.self_device_time_total > 0),
                    key=lambda e: e.self_device_time_total, reverse=True)
    for e in events[:rows]:
        print(f"  {e.self_device_time_total / builds:8.1f} us {e.count / builds:5.1f}x  "
              f"{e.key[:100]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="substring of the case labels to run")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--timeline", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    dispatch.BACKGROUND_JIT = False
    picked = [(c.name, c, False) for c in cases("cuda")]
    picked += [(label, c, True) for label, c in _fa4_cases()]
    for label, case, fa4 in picked:
        if args.only is not None and args.only not in label:
            continue
        if args.timeline:
            for check in (False, True):
                build = _build(case, fa4, dev, check)
                print(f"== {label}, graph on, check_inputs={check}: "
                      f"{event_ms(build):.3f} ms (events, back to back)")
                _print_timeline(profiled(build, 1))
            continue
        build = _build(case, fa4, dev)
        with graphs.off():
            prof = profiled(build)
            no_graph = event_ms(build)
        print(f"== {label}: plain call {event_ms(build):.3f} ms, graphs off "
              f"{no_graph:.3f} ms (events, back to back); per build, graphs off:")
        _print_kernels(prof, 5, args.rows)


if __name__ == "__main__":
    main()
