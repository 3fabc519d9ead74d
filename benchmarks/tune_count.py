"""The generated count kernel's launch shape compared: slots per program, rows per program,
warps (``plans.MIN_SLOTS``, ``plans.ROW_CHUNK``, ``plans.COUNT_WARPS``).

    python benchmarks/tune_count.py [--json results.json] [--only B=8]

For EAGLE-3 at Q=48K, KV=5Q, a 7-step TTT sequence at Q=4K and B=8 at Q=16K with per-sample
lengths (the build table's graph cases) and three 128K cases: the CUDA-graph replay time of
the whole build (``dispatch.build``, all steps of a sequence summed) and the count kernel's
device time (torch.profiler), for every variant; each variant's eight tensors are checked
equal to the default's.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import torch
from bench_build import _docs, _seq_lens  # run as a script: benchmarks/ is on the path
from tune_build import builder, kernel_times, replay_ms

from maskspec.cuda import dispatch, plans

CASES = {  # name → (spec, B, Q_LEN, [KV_LEN, ...], inputs on a device)
    "eagle3 Q=48K KV=5Q": ("eagle3", 1, 49152, [245760], lambda d: {}),
    "eagle3 TTT Q=4K, 7 steps": ("eagle3", 1, 4096, [4096 * s for s in range(1, 8)],
                                 lambda d: {}),
    "eagle3 B=8 Q=16K KV=5Q seq_len": ("eagle3", 8, 16384, [81920], _seq_lens(8, 16384)),
    "causal 128K": ("causal", 1, 131072, [131072], lambda d: {}),
    "sliding_window 128K": ("sliding_window", 1, 131072, [131072], lambda d: {}),
    "document_causal 128K": ("document_causal", 1, 131072, [131072], _docs(1, 131072)),
}
KNOBS = ("MIN_SLOTS", "ROW_CHUNK", "COUNT_WARPS")


def variants() -> list[tuple[int, int, int]]:
    """The default first, then every combination."""
    default = tuple(getattr(plans, k) for k in KNOBS)
    grid = itertools.product((2, 4), (16, 32, 64), (1, 2, 4))
    return [default, *(v for v in grid if v != default)]


def measure(case: tuple[Any, ...], dev: torch.device) -> dict[str, Any]:
    spec, b, q, kvs, inputs = case
    builds = [builder(spec, b, q, kv, inputs(dev), dev) for kv in kvs]
    out = {"replay_ms": sum(replay_ms(f) for f in builds), "count_us": 0.0,
           "tensors": [f() for f in builds]}
    for f in builds:
        times = kernel_times(f)
        out["count_us"] += sum(v for k, v in times.items() if k.startswith("count_"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None, help="the cases whose name contains this")
    args = ap.parse_args()
    dev = torch.device("cuda")
    dispatch.BACKGROUND_JIT = False
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(dev),
                               "torch": torch.__version__, "rows": []}
    reference: dict[str, list] = {}
    for v in variants():
        for k, x in zip(KNOBS, v, strict=True):
            setattr(plans, k, x)
        for name, case in CASES.items():
            if args.only is not None and args.only not in name:
                continue
            m = measure(case, dev)
            tensors = m.pop("tensors")
            ref = reference.setdefault(name, tensors)
            m["equal"] = all(torch.equal(a, b) for ta, tb in zip(tensors, ref, strict=True)
                             for a, b in zip(ta, tb, strict=True))
            row = {"case": name, **dict(zip(KNOBS, v, strict=True)), **m}
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
