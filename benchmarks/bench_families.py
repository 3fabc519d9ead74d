"""Build cost of every shipped spec and of the strided-family benchmark specs
(the shipped catalogue: dilated window, NATTEN, STA-3D, Sparse-VideoGen temporal heads ...).

CPU (``--device cpu``): build time at Q=KV=4096 against eager ``create_block_mask`` over the
spec's mask_mod (each result checked equal, tensor for tensor), the peak resident memory of
one build at Q=KV up to 131072 in a fresh process (the peak resident set above what was
resident before the build, Linux's VmHWM after a reset) against the BlockMask's own tensors,
and
EAGLE-3 at Q=49152, KV=5Q against a hand-written analytic EAGLE-3 builder.

GPU (``--device cuda``): build time at Q=KV=131072 against ``torch.compile(create_block_mask)``
(checked equal), and the peak allocated memory of a build at every size up to 131072.

  python benchmarks/bench_families.py --device cpu --json cpu.json
  python benchmarks/bench_families.py --device cuda --json gpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_build import TENSORS, _own_bytes, _peak_extra, _time_ms
from hand_builders import eagle3_by_hand, eagle3_exact_by_hand
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

import maskspec
from maskspec.api import shipped_specs
from maskspec.cuda import dispatch
from maskspec.fast import Builder
from maskspec.verify import first_difference, random_inputs

SIZES = (4096, 16384, 65536, 131072)


# Specs whose cost grows as Q·KV whatever the build: timed up to 16K.
QUADRATIC = {
    "tree": "its input, the ancestor table, is Q_LEN × Q_LEN",
    "global_sliding_window": "random flags meet the window in every block, which is evaluated",
}
# Masks of ids in any order and tile maps, beside the shipped specs: conditions read one side
# at a time (images as runs of ids, VSA-style selected tiles).
IMAGES = ("mask images\ninput img: int[B, Q_LEN]\n"
          "region same_image = full where img[b, kv] == img[b, q]\n")
TILES = ("mask tiles\ninput sel: bool[B, H, (Q_LEN + 63) // 64, (KV_LEN + 63) // 64]\n"
         "region selected = causal where sel[b, h, q // 64, kv // 64]\n")


@dataclass(frozen=True)
class Case:
    label: str
    spec: str  # a shipped spec's name, or a spec's text
    params: dict[str, int] = field(default_factory=dict)
    rounds: int = 1  # KV_LEN = rounds · Q_LEN
    largest: int = SIZES[-1]  # the element fallback's cost is Q·KV: its cases stop earlier
    globals_every: int = 0  # is_global: one global token every this many (else random)
    run: int = 0  # img: runs of this many positions, the runs' ids shuffled

    def load(self) -> maskspec.CompiledMask:
        if "\n" in self.spec:
            return maskspec.compile(self.spec, **self.params)
        return maskspec.load(self.spec, **self.params)


def cases() -> list[Case]:
    shipped = [Case(n, n, largest=16384 if n in QUADRATIC else SIZES[-1])
               for n in sorted(shipped_specs())]
    return [
        *shipped,
        Case("eagle3 KV=5Q", "eagle3", rounds=5),
        Case("dilated_sliding_window (±64, every 4th)", "dilated_sliding_window"),
        Case("natten canvas 32 wide, 7×7", "natten", {"width": 32}),
        Case("natten canvas 64 wide, 7×7", "natten", {"width": 64}),
        Case("sta_3d tiles of 64, 4×4 tiles per frame, 3×3×3", "sta_3d"),
        Case("svg_temporal, 3 tokens per frame", "svg_temporal", {"frame": 3}),
        Case("svg_temporal, 226 prompt + frames of 1350", "svg_temporal"),
        # the element fallback (conditions with no interval form in kv)
        Case("key set: global_sliding_window (±64), a global token every 1024",
             "global_sliding_window", largest=16384, globals_every=1024),
        Case("natten_morton canvas 64×64, 7×7", "natten_morton",
             {"canvas_w": 64, "canvas_h": 64}),
        Case("ids in any order: images of 1000 tokens", IMAGES, run=1000),
        Case("tile map: causal ∩ selected 64×64 tiles", TILES),
    ]


def _inputs(mask: maskspec.CompiledMask, q: int, kv: int, dev: torch.device,
            globals_every: int = 0, run: int = 0) -> dict:
    inputs = random_inputs(mask, 1, 1, q, kv, random.Random(0))
    if globals_every:  # Longformer's few global tokens (CLS, task tokens)
        inputs["is_global"] = torch.arange(max(q, kv)) % globals_every == 0
    if run:
        ids = torch.randperm(-(-q // run), generator=torch.Generator().manual_seed(0))
        inputs["img"] = ids[torch.arange(q) // run].view(1, q)
    return {k: v.to(dev) for k, v in inputs.items()}


def _build(mask: maskspec.CompiledMask, q: int, kv: int, dev: torch.device,
           inputs: dict) -> BlockMask:
    return mask.block_mask(1, 1, q, kv, dev, 128, check_inputs=False, **inputs)


def _reference(mask: maskspec.CompiledMask, q: int, kv: int, dev: torch.device, inputs: dict,
               compiled: bool) -> tuple[Any, float]:
    """create_block_mask's BlockMask over the spec's mask_mod, and its build time."""
    mm = mask.mask_mod(B=1, H=1, Q_LEN=q, KV_LEN=kv, device=dev, **inputs)
    cbm = torch.compile(create_block_mask) if compiled else create_block_mask

    def ref() -> BlockMask:
        return cbm(mm, 1, 1, q, kv, device=dev, BLOCK_SIZE=128)
    try:
        bm = ref()
        return bm, _time_ms(ref, dev, 3000.0)
    except torch.OutOfMemoryError:
        return None, float("nan")


def time_case(case: Case, q: int, dev: torch.device, compiled: bool) -> dict[str, Any]:
    torch._dynamo.reset()  # a fresh compile of create_block_mask per spec (no recompile limit)
    mask = case.load()
    kv = q * case.rounds
    inputs = _inputs(mask, q, kv, dev, case.globals_every, case.run)
    if dev.type == "cuda":
        dispatch.compiled(mask._bind(1, 1, q, kv, dev, inputs), wait=True)
    peak, bm = _peak_extra(lambda: _build(mask, q, kv, dev, inputs), dev)
    ms = _time_ms(lambda: _build(mask, q, kv, dev, inputs), dev)
    ref, ref_ms = _reference(mask, q, kv, dev, inputs, compiled)
    exact = "OOM" if ref is None else ("exact" if first_difference(bm, ref) is None else "WRONG")
    own = _own_bytes(bm)
    row = {"case": case.label, "Q": q, "KV": kv, "maskspec_ms": ms, "torch_ms": ref_ms,
           "ratio": ref_ms / ms, "exact": exact, "own_MB": own / 2**20,
           "peak_over_own": None if peak is None else peak / own}
    if dev.type == "cuda" and not mask.ir.fallback:  # the kernels replayed from a CUDA graph
        graph = Builder(mask, 128, cuda_graph=True)
        gm = graph(1, 1, q, kv, dev, **inputs)
        row["graph_ms"] = _time_ms(lambda: graph(1, 1, q, kv, dev, **inputs), dev)
        row["graph_ratio"] = ref_ms / row["graph_ms"]
        row["graph_exact"] = ref is not None and first_difference(gm, ref) is None
    return row


# ---------------------------------------------------------------- memory


def memory_child(label: str, q: int) -> None:
    """One build in this (fresh) process: print the peak RSS it added, and its own bytes."""
    case = next(c for c in cases() if c.label == label)
    mask, dev = case.load(), torch.device("cpu")
    kv = q * case.rounds
    inputs = _inputs(mask, q, kv, dev, case.globals_every, case.run)
    # A warm-up build two blocks long loads what a first build imports lazily (torch._dynamo
    # alone is ~70 MB resident), and frees next to nothing that could stay resident.
    _build(mask, 256, 256 * case.rounds, dev, _inputs(mask, 256, 256 * case.rounds, dev))
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the peak-RSS count
    base = _status_kb("VmRSS")
    bm = _build(mask, q, kv, dev, inputs)
    peak = (_status_kb("VmHWM") - base) * 1024
    print(json.dumps({"peak": peak, "own": _own_bytes(bm)}))


def _status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_memory(case: Case, q: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--memory-child", case.label, str(q)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"case": case.label, "Q": q, "peak_MB": r["peak"] / 2**20, "own_MB": r["own"] / 2**20,
            "peak_over_own": r["peak"] / r["own"]}


def gpu_memory(case: Case, q: int, dev: torch.device) -> dict[str, Any]:
    mask = case.load()
    kv = q * case.rounds
    inputs = _inputs(mask, q, kv, dev, case.globals_every, case.run)
    _build(mask, q, kv, dev, inputs)
    peak, bm = _peak_extra(lambda: _build(mask, q, kv, dev, inputs), dev)
    own = _own_bytes(bm)
    return {"case": case.label, "Q": q, "peak_MB": peak / 2**20, "own_MB": own / 2**20,
            "peak_over_own": peak / own}


# ---------------------------------------------------------------- EAGLE-3 by hand


def eagle3_vs_hand(dev: torch.device, q: int = 49152, rounds: int = 5) -> dict[str, Any]:
    """maskspec's EAGLE-3 build against two hand-written ones in one process: the analytic
    builder with zero padding (``eagle3_by_hand``) and the closed form of the very tensors
    maskspec and create_block_mask write, padding entries included
    (``eagle3_exact_by_hand``, checked entry for entry here)."""
    mask = maskspec.load("eagle3")
    ours = _time_ms(lambda: mask.block_mask(1, 1, q, q * rounds, dev, 128), dev)
    hand = _time_ms(lambda: eagle3_by_hand(q, rounds, 128, dev), dev)
    exact = _time_ms(lambda: eagle3_exact_by_hand(q, rounds, 128, dev), dev)
    a, b = mask.block_mask(1, 1, q, q * rounds, dev, 128), eagle3_by_hand(q, rounds, 128, dev)
    c = eagle3_exact_by_hand(q, rounds, 128, dev)
    same = all(torch.equal(getattr(a, t).int(), getattr(b, t).int()) for t in
               ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"))
    return {"Q": q, "KV": q * rounds, "maskspec_ms": ours, "hand_ms": hand,
            "hand_exact_layout_ms": exact, "maskspec_over_hand": ours / hand,
            "maskspec_over_exact_layout": ours / exact, "counts_equal": same,
            "blocks_equal": first_difference(a, b) is None,
            "exact_layout_equal": all(torch.equal(getattr(a, t), getattr(c, t))
                                      for t in TENSORS)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None, help="substring of the case labels to run")
    ap.add_argument("--memory-child", nargs=2, metavar=("LABEL", "Q"))
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--fallback", action="store_true",
                    help="only the cases that need the element fallback")
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    dev = torch.device(args.device)
    dispatch.BACKGROUND_JIT = False
    picked = [c for c in cases() if (args.only is None or args.only in c.label)
              and (not args.fallback or c.load().ir.fallback)]
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda"
                               else "cpu", "torch": torch.__version__, "builds": [],
                               "memory": []}
    q = 131072 if dev.type == "cuda" else 4096
    for c in picked:
        if c.rounds > 1 and dev.type == "cuda":
            continue  # KV=5Q at 128K: 640K keys; bench_build.py times EAGLE-3 on the GPU
        row = time_case(c, min(q, c.largest), dev, compiled=dev.type == "cuda")
        print(json.dumps(row), flush=True)
        results["builds"].append(row)
    for c in [] if args.skip_memory else picked:
        for n in SIZES:
            if (c.rounds > 1 and n > 32768) or n > c.largest:
                continue
            row = gpu_memory(c, n, dev) if dev.type == "cuda" else cpu_memory(c, n)
            print(json.dumps(row), flush=True)
            results["memory"].append(row)
    if dev.type == "cpu" and args.only is None:
        results["eagle3_vs_hand"] = eagle3_vs_hand(dev)
        print(json.dumps(results["eagle3_vs_hand"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
