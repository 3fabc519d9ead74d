"""BlockMask build time and memory: maskspec's builders beside torch's create_block_mask.

    python benchmarks/bench_build.py                # the GPU table (BENCHMARKS.md)
    python benchmarks/bench_build.py --device cpu   # a smaller CPU table

Every case is built by each method in the same process: maskspec
(``CompiledMask.block_mask`` with ``check_inputs=False``: on CUDA the spec's generated
Triton kernel, from the second call of a configuration replayed as a CUDA graph whose
outputs are copied out), maskspec checked (the default call, whose value checks run on the
device), maskspec no graph (the plain call with its graphs off, ``graphs.off()``),
maskspec in torch.compile (the call inside ``torch.compile(fullgraph=True, dynamic=True)``:
one custom op), maskspec graph (``fast.Builder(cuda_graph=True)``, the same kernels
replayed), maskspec with the row stage torch.compile'd instead
(``fast.Builder(compiled=True)``, with and without a graph), maskspec's torch path (what a
build runs while its kernels compile: ``dispatch.torch_path``), create_block_mask eager and
torch.compile'd, and for EAGLE-3 without padding a hand-written builder
(``hand_builders.eagle3_by_hand``) eager, torch.compile'd and replayed as a CUDA graph.
Times are medians of many runs, each timed with CUDA events around the whole build (a TTT
case builds all its steps); memory is the peak allocated above what was live before one
build. Also measured: the first calls in a fresh process (cold and warm compile caches,
kernels compiled in the background or first) and flex_attention forward+backward with
maskspec's BlockMask and with create_block_mask's of a hand-written mask_mod.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hand_builders import eagle3_by_hand  # run as a script: benchmarks/ is on the path
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

import maskspec
from maskspec.cuda import dispatch, graphs
from maskspec.fast import Builder
from maskspec.targets import flex
from maskspec.verify import PAIRS, first_difference

SPECS = Path(__file__).resolve().parent.parent / "specs"
TENSORS = [name for pair in PAIRS for name in pair]


@dataclass
class Case:
    """One benchmark: a spec at B, Q_LEN and one or more KV_LENs built back to back."""

    name: str
    spec: str
    B: int
    q: int
    kvs: list[int]
    inputs: Callable[[torch.device], dict[str, torch.Tensor]] = field(default=lambda d: {})


def _seq_lens(b: int, q: int) -> Callable[[torch.device], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    lens = torch.randint(q // 2, q + 1, (b,), generator=gen)
    return lambda dev: {"seq_len": lens.to(dev)}


def _docs(b: int, n: int) -> Callable[[torch.device], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    starts = torch.rand(b, n, generator=gen) < 1 / 2048  # documents of ~2K tokens
    ids = starts.cumsum(-1)
    return lambda dev: {"doc": ids.to(dev)}


def cases(device: str) -> list[Case]:
    """The table's rows; sizes shrink on CPU."""
    if device == "cpu":
        return [
            Case("eagle3 Q=8K KV=5Q", "eagle3", 1, 8192, [40960]),
            Case("eagle3 TTT Q=1K, 7 steps", "eagle3", 1, 1024, [1024 * s for s in range(1, 8)]),
            Case("causal 16K", "causal", 1, 16384, [16384]),
        ]
    out = [
        Case("eagle3 Q=48K KV=5Q", "eagle3", 1, 49152, [245760]),
        Case("eagle3 TTT Q=4K, 7 steps", "eagle3", 1, 4096, [4096 * s for s in range(1, 8)]),
        Case("eagle3 B=8 Q=16K KV=5Q seq_len", "eagle3", 8, 16384, [81920], _seq_lens(8, 16384)),
        Case("causal 128K", "causal", 1, 131072, [131072]),
    ]
    if (SPECS / "document_causal.mask").exists():
        out.append(Case("document_causal 128K", "document_causal", 1, 131072, [131072],
                        _docs(1, 131072)))
    if (SPECS / "sliding_window.mask").exists():
        out.append(Case("sliding_window 128K", "sliding_window", 1, 131072, [131072]))
    return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_ms(fn: Callable[[], Any], dev: torch.device, budget_ms: float = 1500.0) -> float:
    """Median of repeated runs (CUDA events on GPU, perf_counter on CPU) after a warm-up."""
    fn()
    _sync(dev)
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    reps = int(min(200, max(5, budget_ms / max((time.perf_counter() - t0) * 1e3, 1e-3))))
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _own_bytes(bm: BlockMask) -> int:
    return sum(getattr(bm, n).numel() * getattr(bm, n).element_size() for n in TENSORS)


def _peak_extra(fn: Callable[[], Any], dev: torch.device) -> tuple[int | None, Any]:
    """(peak bytes allocated above the live baseline during fn, fn's result)."""
    if dev.type != "cuda":
        return None, fn()
    gc.collect()
    _sync(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    out = fn()
    _sync(dev)
    return torch.cuda.max_memory_allocated(dev) - base, out


def _methods(mask: maskspec.CompiledMask, case: Case, dev: torch.device) -> dict[str, Callable]:
    """name → build(kv) for every method; each closes over its own state (compiled fns)."""
    inputs = case.inputs(dev)
    b = case.B if mask.ir.depends_on("b") else 1
    mods = {kv: mask.mask_mod(B=case.B, Q_LEN=case.q, KV_LEN=kv, device=dev, **inputs)
            for kv in case.kvs}
    graph = Builder(mask, cuda_graph=True)
    compiled = Builder(mask, compiled=True)
    graph_compiled = Builder(mask, cuda_graph=True, compiled=True)
    cbm_compiled = torch.compile(create_block_mask)
    in_compile = torch.compile(  # the default call inside a compiled training step
        lambda kv: mask.block_mask(case.B, 1, case.q, kv, dev, check_inputs=False, **inputs),
        fullgraph=True, dynamic=True)

    def no_graph(kv: int) -> BlockMask:  # the plain call as it was before its graphs
        with graphs.off():
            return mask.block_mask(case.B, 1, case.q, kv, dev, check_inputs=False, **inputs)

    def torch_path(kv: int) -> BlockMask:  # what a build runs while its kernels compile
        tensors = dispatch.torch_path(mask._bind(case.B, 1, case.q, kv, dev, inputs, False))
        return flex.from_tensors(tensors, case.q, kv, (128, 128), mods[kv])

    out = {
        "maskspec": lambda kv: mask.block_mask(
            case.B, 1, case.q, kv, dev, check_inputs=False, **inputs),
        "maskspec checked": lambda kv: mask.block_mask(case.B, 1, case.q, kv, dev, **inputs),
        "maskspec no graph": no_graph,
        "maskspec in torch.compile": in_compile,
        "maskspec torch path": torch_path,
        "maskspec graph": lambda kv: graph(case.B, 1, case.q, kv, dev, **inputs),
        "maskspec compiled rows": lambda kv: compiled(case.B, 1, case.q, kv, dev, **inputs),
        "maskspec graph+compiled rows": lambda kv: graph_compiled(
            case.B, 1, case.q, kv, dev, **inputs),
        "torch eager": lambda kv: create_block_mask(mods[kv], b, 1, case.q, kv, device=dev),
        "torch compiled": lambda kv: cbm_compiled(mods[kv], b, 1, case.q, kv, device=dev),
    }
    if case.spec == "eagle3" and not case.inputs(dev) and case.B == 1:
        out.update(_hand_written(case, dev))
    if dev.type != "cuda":  # no graphs on CPU; inductor's CPU code is no faster than eager
        for name in ("maskspec graph", "maskspec no graph", "maskspec compiled rows",
                     "maskspec graph+compiled rows", "maskspec torch path", "hand-written graph"):
            out.pop(name, None)
    return out


def _hand_written(case: Case, dev: torch.device) -> dict[str, Callable]:
    """A hand-written analytic EAGLE-3 builder (``bench_families.eagle3_by_hand``: aligned
    shapes, no padding) eager, torch.compile'd, and replayed as one CUDA graph per shape."""
    def hand(kv: int) -> BlockMask:
        return eagle3_by_hand(case.q, kv // case.q, 128, dev)
    compiled = torch.compile(hand)
    graphs: dict[int, tuple[torch.cuda.CUDAGraph, BlockMask]] = {}

    def graphed(kv: int) -> BlockMask:
        if kv not in graphs:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                hand(kv)
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                bm = hand(kv)
            graphs[kv] = (graph, bm)
        graphs[kv][0].replay()
        return graphs[kv][1]
    return {"hand-written eager": hand, "hand-written compiled": compiled,
            "hand-written graph": graphed}


def run_case(case: Case, dev: torch.device) -> dict[str, Any]:
    """Every method on one case: first call, steady time, peak memory, exactness."""
    mask = maskspec.load(SPECS / f"{case.spec}.mask")
    res: dict[str, Any] = {"case": case.name, "methods": {}}
    built: dict[str, BlockMask] = {}
    for name, build in _methods(mask, case, dev).items():
        row: dict[str, Any] = {}
        try:
            t0 = time.perf_counter()
            first_peak, _ = _peak_extra(lambda b=build: [b(kv) for kv in case.kvs], dev)
            row["first_s"] = time.perf_counter() - t0
            row["first_peak_MB"] = None if first_peak is None else first_peak / 2**20
            row["ms"] = _time_ms(lambda b=build: [b(kv) for kv in case.kvs], dev)
            peak, bm = _peak_extra(lambda b=build: b(case.kvs[-1]), dev)
            row["own_MB"] = _own_bytes(bm) / 2**20
            row["peak_MB"] = None if peak is None else peak / 2**20
            built[name] = bm
        except torch.OutOfMemoryError:
            row["error"] = "OOM"
        except Exception as err:  # a failing method is a result, not a crash of the table
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        res["methods"][name] = row
        print(f"  {case.name:34s} {name:28s} {_fmt_row(row)}", flush=True)
    ref = built.get("torch compiled") or built.get("torch eager")
    res["exact"] = {
        n: (first_difference(bm, ref) or "exact") if ref is not None else "no reference"
        for n, bm in built.items() if n.startswith(("maskspec", "hand-written"))
    }
    return res


def _fmt_row(row: dict[str, Any]) -> str:
    if "error" in row:
        return row["error"]
    peak = "" if row["peak_MB"] is None else f"peak {row['peak_MB']:.1f} MB"
    return f"{row['ms']:.4f} ms  first {row['first_s']:.2f} s  own {row['own_MB']:.1f} MB {peak}"


FIRST_CALL_MODES = {
    "graph": {"cuda_graph": True},
    "no graph": {},
    "no graph, compile first": {},
    "graph+compiled rows": {"cuda_graph": True, "compiled": True},
}


def first_call_child(mode: str) -> None:
    """In a fresh process: the first Builder call (eagle3, Q=4K, KV=8K, CUDA), a call at a new
    KV_LEN, and the remaining five KV_LENs of a 7-step TTT sequence; then, unless the mode
    compiles first, the wait until the kernels compiled in the background and one build on
    them."""
    t0 = time.perf_counter()
    dispatch.BACKGROUND_JIT = mode != "no graph, compile first"
    mask = maskspec.load(SPECS / "eagle3.mask")
    fast = Builder(mask, **FIRST_CALL_MODES[mode])
    dev = torch.device("cuda")
    torch.zeros(1, device=dev)
    marks = [time.perf_counter()]
    for kvs in ([8192], [12288], [4096 * s for s in (1, 4, 5, 6, 7)]):
        for kv in kvs:
            fast(1, 1, 4096, kv, dev)
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
    first, next_kv, rest = (b - a for a, b in itertools.pairwise(marks))
    out = {"setup_s": marks[0] - t0, "first_s": first, "next_kv_s": next_kv, "ttt_rest_s": rest}
    if dispatch.BACKGROUND_JIT:
        dispatch.compiled(mask._bind(1, 1, 4096, 8192, dev, {}), wait=True)
        out["compiled_after_s"] = time.perf_counter() - marks[0]
        t1 = time.perf_counter()
        fast(1, 1, 4096, 8192, dev)
        torch.cuda.synchronize()
        out["first_on_kernels_s"] = time.perf_counter() - t1
    print(json.dumps(out))


def first_call() -> dict[str, Any]:
    """Each Builder mode in two fresh processes sharing empty compile caches (Triton's and
    Inductor's): cold, then warm."""
    import tempfile

    out = {}
    for mode in FIRST_CALL_MODES:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-"),
                   TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="triton-"))
        for cache in ("cold cache", "warm cache"):
            label = f"{mode}, {cache}"
            proc = subprocess.run(
                [sys.executable, __file__, "--first-call-child", mode], env=env,
                capture_output=True, text=True, check=False,
            )
            text = proc.stdout.strip()
            line = text.splitlines()[-1] if text else proc.stderr[-300:]
            out[label] = json.loads(line) if line.startswith("{") else {"error": line}
            print(f"  first call, {label}: {out[label]}", flush=True)
    return out


def eagle3_hand_written(q_len: int, seq_len: torch.Tensor) -> Callable:
    """EAGLE-3's mask_mod as TorchSpec wrote it by hand before maskspec (causal context plus
    one diagonal per draft round, each with its seq_len padding), for comparison."""

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        causal = (q_idx >= kv_idx) & (kv_idx < seq_len[b]) & (q_idx < seq_len[b])
        suffix = (kv_idx >= q_len) & (kv_idx % q_len < seq_len[b]) \
            & ((kv_idx - q_idx) % q_len == 0)
        return causal | suffix

    return mask_mod


def flex_fwd_bwd(dev: torch.device, q_len: int = 8192, heads: int = 8, dim: int = 128,
                 trials: int = 10) -> dict:
    """flex_attention forward+backward (bf16): maskspec's BlockMask and generated mask_mod
    against create_block_mask's BlockMask of the hand-written mask_mod, in interleaved
    trials; the same create_block_mask call timed twice per trial gives the noise floor."""
    mask = maskspec.load(SPECS / "eagle3.mask")
    kv_len = 5 * q_len
    seq_len = torch.full((1,), q_len, device=dev)
    ours = mask.block_mask(1, 1, q_len, kv_len, dev, check_inputs=False, seq_len=seq_len)
    hand = eagle3_hand_written(q_len, seq_len)
    ref = torch.compile(create_block_mask)(hand, 1, 1, q_len, kv_len, device=dev)
    gen = torch.Generator(dev).manual_seed(0)
    q, k, v = (
        torch.randn(1, heads, n, dim, device=dev, dtype=torch.bfloat16, generator=gen)
        .requires_grad_() for n in (q_len, kv_len, kv_len)
    )
    grad = torch.randn(1, heads, q_len, dim, device=dev, dtype=torch.bfloat16, generator=gen)
    flex = torch.compile(flex_attention)

    def step(bm: BlockMask) -> torch.Tensor:
        q.grad = k.grad = v.grad = None
        out = flex(q, k, v, block_mask=bm)
        out.backward(grad)
        return out

    same_blocks = first_difference(ours, ref) is None
    same = torch.equal(step(ours), step(ref))
    runs = {"maskspec": ours, "create_block_mask": ref, "create_block_mask again": ref}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(trials):  # interleaved, so drift hits all alike
        for name, bm in runs.items():
            times[name].append(_time_ms(lambda bm=bm: step(bm), dev, budget_ms=300))
    ratios = [a / b for a, b in zip(times["maskspec"], times["create_block_mask"], strict=True)]
    noise = [a / b for a, b in zip(times["create_block_mask again"], times["create_block_mask"],
                                   strict=True)]
    res: dict[str, Any] = {k: statistics.median(v) for k, v in times.items()}
    res.update(ratio=statistics.median(ratios), ratio_range=(min(ratios), max(ratios)),
               noise_ratio=statistics.median(noise), noise_range=(min(noise), max(noise)),
               blocks_equal=same_blocks, outputs_equal=same)
    print(f"  flex fwd+bwd: {res}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    ap.add_argument("--first-call", action="store_true", help="only the first-call table")
    ap.add_argument("--first-call-child", choices=list(FIRST_CALL_MODES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.first_call_child:
        return first_call_child(args.first_call_child)
    if args.first_call:
        print(json.dumps(first_call(), indent=1))
        return None
    # Each case adds compiled entries (create_block_mask's per shape, Builder's per spec):
    # more than dynamo's default limit of 8 in one process.
    torch._dynamo.config.recompile_limit = 64
    # The table times the kernels, and its first-call column their compile in the
    # foreground; the first-call table (fresh processes) measures the background compile.
    dispatch.BACKGROUND_JIT = False
    dev = torch.device(args.device)
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name(dev)
            if dev.type == "cuda" else "cpu", "date": time.strftime("%Y-%m-%d")}
    print(info, flush=True)
    results: dict[str, Any] = {"info": info, "cases": []}
    if dev.type == "cuda" and not args.only:
        results["first_call"] = first_call()
    for case in cases(args.device):
        if args.only and args.only not in case.name:
            continue
        results["cases"].append(run_case(case, dev))
    if dev.type == "cuda" and not args.only:
        results["flex"] = flex_fwd_bwd(dev)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print_table(results)


def print_table(results: dict[str, Any]) -> None:
    """Markdown tables: time (and ratio to create_block_mask), memory, exactness."""
    print(f"\n{results['info']}\n")
    print("| case | method | build ms | torch compiled ÷ this | torch eager ÷ this | peak extra MB "
          "| peak / own | first call s | first-call peak / own | exact |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in results["cases"]:
        m = c["methods"]
        tc, te = m.get("torch compiled", {}).get("ms"), m.get("torch eager", {}).get("ms")
        for name, row in m.items():
            if "error" in row:
                print(f"| {c['case']} | {name} | {row['error']} | | | | | | | |")
                continue
            ratio_c = f"{tc / row['ms']:.2f}×" if tc else ""
            ratio_e = f"{te / row['ms']:.2f}×" if te else ""
            peak = "" if row["peak_MB"] is None else f"{row['peak_MB']:.1f}"
            rel = "" if row["peak_MB"] is None else f"{row['peak_MB'] / row['own_MB']:.2f}"
            first = "" if row["first_peak_MB"] is None else \
                f"{row['first_peak_MB'] / row['own_MB']:.2f}"
            exact = c["exact"].get(name, "")
            print(f"| {c['case']} | {name} | {row['ms']:.3f} | {ratio_c} | {ratio_e} | {peak} "
                  f"| {rel} | {row['first_s']:.2f} | {first} | {exact} |")


if __name__ == "__main__":
    main()
