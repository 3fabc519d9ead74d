"""Long-context builds on the CPU: time and peak memory growth, each case in a fresh process.

    python benchmarks/bench_cpu_scale.py              # the CPU scale table (BENCHMARKS.md)
    python benchmarks/bench_cpu_scale.py --json out.json

A child process loads the spec, warms up at a small size (imports, allocator), records
its peak RSS, then builds the BlockMask ``--repeat`` times at full size: the reported
memory is the growth of the peak RSS (measured in a second child whose glibc mmap threshold
is fixed at 64 KiB, so that freed tensors leave RSS), the time the median build.
create_block_mask would materialize Q×KV booleans here (~112 GB for EAGLE-3 at 49K × 245K).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

import maskspec

CASES = {
    "eagle3": ("eagle3", 49152, 245760, 0),
    "document_causal": ("document_causal", 131072, 131072, 64),
}


def _inputs(docs: int, n: int) -> dict[str, torch.Tensor]:
    if not docs:
        return {}
    return {"doc": maskspec.document_ids(torch.linspace(0, n, docs + 1).long(), n)}


def child(case: str, repeat: int) -> dict:
    """Run one case in this process and return its measurements."""
    spec, q, kv, docs = CASES[case]
    mask = maskspec.load(spec)
    mask.block_mask(1, 1, 256, 256 * (kv // q), "cpu", 128, **_inputs(docs, 256 * (kv // q)))
    inputs = _inputs(docs, max(q, kv))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        bm = mask.block_mask(1, 1, q, kv, "cpu", 128, **inputs)
        times.append(time.perf_counter() - t)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    own = sum(t.numel() * t.element_size() for t in bm.as_tuple()[2:10]) / 2**20
    return {"case": case, "q": q, "kv": kv, "docs": docs, "seconds": statistics.median(times),
            "first_seconds": times[0], "peak_growth_MB": grown, "blockmask_MB": own,
            "partial_blocks": int(bm.kv_num_blocks.sum()),
            "full_blocks": int(bm.full_kv_num_blocks.sum())}


def _child(case: str, repeat: int, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", case, "--repeat", str(repeat)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(case: str, repeat: int = 3) -> dict:
    """One case in fresh Python processes: times as they come, memory with a fixed glibc
    mmap threshold (otherwise glibc keeps freed tensors in per-thread heaps, its threshold
    grows after frees, and peak RSS varies from run to run with allocation order)."""
    timed = _child(case, repeat, dict(os.environ))
    sized = _child(case, 1, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    return {**timed, "peak_growth_MB": sized["peak_growth_MB"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--child", choices=list(CASES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeat)))
        return
    rows = [run(c, args.repeat) for c in (CASES if args.case == "all" else [args.case])]
    meta = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    print(meta)
    print("| case | Q × KV | build s (median) | first build s | peak RSS growth MB "
          "| BlockMask MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['q']} × {r['kv']} | {r['seconds']:.3f} | "
              f"{r['first_seconds']:.3f} | {r['peak_growth_MB']:.1f} | {r['blockmask_MB']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
