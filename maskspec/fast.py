"""Fast BlockMask builds: the same pipeline replayed as one CUDA graph per shape, or with its
row stage compiled once for all KV lengths.

On CUDA a build is the spec's generated Triton count kernel and two fixed ones
(``cuda.dispatch.tensors``); a CUDA graph removes what is left, the Python and launch overhead.
``compiled=True`` instead traces ``lower.slot_tensors`` with torch.compile, KV_LEN symbolic, so
KV_LEN growing across TTT steps and new input values reuse one compiled graph (a new Q_LEN, B
or H may compile once more), and classifies the rows with ``dispatch.classify``: the route for
devices without Triton. Nothing here re-derives the pipeline; it only runs it faster.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask

from maskspec import deferred, ir, lower
from maskspec import inputs as inputs_stage
from maskspec import mask_mod as mask_mod_backend
from maskspec.api import CompiledMask
from maskspec.context import BuildContext
from maskspec.cuda import dispatch
from maskspec.inputs import block_size_of
from maskspec.targets import flex

log = logging.getLogger("maskspec")


class _RowStage:
    """The part torch.compile traces, over the IR alone (see ``Builder.__init__``)."""

    def __init__(self, mask: ir.MaskIR) -> None:
        self.mask = mask

    def rows(
        self, sizes: dict[str, int], kv: torch.Tensor, inputs: dict[str, torch.Tensor],
        device: torch.device,
    ) -> tuple[torch.Tensor, ...]:
        """Row slots (lo, hi, phase, stride, length), KV_LEN = len(kv)."""
        return lower.slot_tensors(self.mask, {**sizes, "KV_LEN": kv.shape[0]}, inputs, device)


@dataclass
class _Captured:
    """One shape's CUDA graph: static input buffers, the BlockMask over its outputs, and
    its value check's flag (``inputs.value_flag``, None when nothing is checked)."""

    graph: torch.cuda.CUDAGraph
    sizes: dict[str, int]
    inputs: dict[str, torch.Tensor]
    block_mask: BlockMask
    bad: torch.Tensor | None


class Builder:
    """BlockMasks of one spec and block size from the compiled pipeline.

    Call it like ``CompiledMask.block_mask``: input values are checked as there (on CUDA on
    the device, a failure raising at a later call or ``maskspec.wait_checks()``; inside a
    captured graph too) and the build reads their sanitized values; ``check_inputs=False``
    only sanitizes them. With ``cuda_graph=True`` the first call at a shape captures a CUDA
    graph and later calls copy the inputs in and replay it: the returned BlockMask wraps the
    graph's static outputs, which the next call at the same shape overwrites in place
    (``clone`` what must outlive it); each shape's graph has its own memory pool, so graphs
    replayed in any order leave each other's masks intact. While the kernels still compile
    (``dispatch.compiled``), calls return uncaptured builds. ``compiled=True`` traces the row
    stage with torch.compile instead of running the generated kernel; ``backend`` is
    torch.compile's (``"eager"`` traces only).
    """

    def __init__(
        self, mask: CompiledMask, BLOCK_SIZE: int | tuple[int, int] = 128, *,
        cuda_graph: bool = False, compiled: bool = False, backend: str = "inductor",
        check_inputs: bool = True,
    ) -> None:
        if mask.ir.fallback:
            t, res = next(mask.ir.residuals())
            raise ValueError(
                f"spec `{mask.name}` needs the element fallback (region `{t.name}`: "
                f"{res.why}), which reads the blocks it decides back to the host: a Builder's "
                "builds never sync and capture in CUDA graphs; build with mask.block_mask(...)"
            )
        self.mask = mask
        self.block_size = block_size_of(BLOCK_SIZE)
        self.check = check_inputs
        self.cuda_graph = cuda_graph
        self.use_compiled = compiled
        # Over the IR, not a bound method: no reference cycle, so a dropped Builder frees its
        # graphs at once, never in a garbage collection that might run during a capture.
        self.compiled = torch.compile(_RowStage(mask.ir).rows, dynamic=False, backend=backend)
        self._graphs: dict[tuple, _Captured] = {}

    def __call__(
        self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any = None,
        **inputs: Any,
    ) -> BlockMask:
        """A BlockMask equal to ``CompiledMask.block_mask``'s for the same arguments."""
        if self.cuda_graph:
            return self._replay(B, H, Q_LEN, KV_LEN, device, inputs)
        return self._eager(self._bind(B, H, Q_LEN, KV_LEN, device, inputs))

    def _bind(
        self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any,
        inputs: dict[str, Any],
    ) -> BuildContext:
        return self.mask._bind(B, H, Q_LEN, KV_LEN, device, inputs, self.check, self.block_size)

    def _eager(self, ctx: BuildContext) -> BlockMask:
        """One build, not captured."""
        mm = mask_mod_backend.mask_mod(ctx.mask, ctx.sizes, ctx.inputs)
        return flex.from_tensors(self._run(ctx), ctx.q_len, ctx.kv_len, self.block_size, mm)

    def _run(self, ctx: BuildContext) -> tuple[torch.Tensor, ...]:
        """Call the pipeline: ``dispatch.tensors``, or the compiled row stage then ``classify``.

        KV_LEN travels to the compiled stage as the length of an empty tensor marked
        dynamic: every other size stays a constant, which keeps tracing short (symbolic
        sizes cost seconds there).
        """
        if not self.use_compiled:
            return dispatch.tensors(ctx)
        kv = torch.empty(ctx.kv_len, 0)
        torch._dynamo.maybe_mark_dynamic(kv, 0)
        fixed = {k: v for k, v in ctx.sizes.items() if k != "KV_LEN"}
        rows = lower.Rows(*self.compiled(fixed, kv, dict(ctx.inputs), ctx.device),
                          family=lower.family_plan(ctx.mask, ctx.sizes))
        return dispatch.classify(rows, ctx.q_len, ctx.kv_len, self.block_size, True)

    def _replay(
        self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any,
        inputs: dict[str, Any],
    ) -> BlockMask:
        """Copy the given inputs into the call's graph (captured on first use) and replay it.

        Graphs are keyed by the call itself (sizes, device, each given tensor's shape, dtype
        and device), so a repeated call skips binding: its shapes were checked at capture,
        and the inputs it omits still hold the defaults captured with it. Inputs given as
        lists or numbers are bound on every call and copied in whole. The graph computes
        the value check's flag too; it is read back after the replay (``deferred``) when the
        call copied tensors in unchecked (binding checks the others; defaults pass).
        """
        tensors = all(isinstance(t, torch.Tensor) for t in inputs.values())
        key = (B, H, Q_LEN, KV_LEN, str(device), tensors, *(
            (k, t.shape, t.dtype, t.device) if tensors else k for k, t in sorted(inputs.items())
        ))
        cap = self._graphs.get(key)
        unchecked = inputs if cap is not None and tensors else {}
        if cap is None or not tensors:
            ctx = self._bind(B, H, Q_LEN, KV_LEN, device, inputs)
            if cap is None and not self._compiled(ctx):
                return self._eager(ctx)  # captured once the kernels compiled
            if cap is None:
                cap = self._graphs[key] = self._capture(ctx, raw=tensors and bool(inputs))
            inputs = ctx.inputs
        if self.check:
            deferred.poll()
        for name, t in inputs.items():
            cap.inputs[name].copy_(t)
        cap.graph.replay()
        if self.check and cap.bad is not None and unchecked:
            report = functools.partial(inputs_stage.report_failed, self.mask.ir, cap.sizes,
                                       {**cap.inputs, **unchecked}, " (a CUDA graph replay)")
            deferred.watch(cap.bad, report)
        return cap.block_mask

    def _compiled(self, ctx: BuildContext) -> bool:
        """Whether the generated kernels are ready to capture (``dispatch.compiled``; the
        compiled row stage compiles when first called, ready or not)."""
        return self.use_compiled or ctx.device.type != "cuda" or dispatch.compiled(ctx)

    def _capture(self, ctx: BuildContext, raw: bool) -> _Captured:
        """Warm up on a side stream (JIT and compiles happen there), then capture the
        pipeline into a pool of its own. ``raw``: replays copy the caller's tensors in
        unbound, so the graph sanitizes them and (checking) computes their check's flag;
        otherwise what replays read was bound (checked and sanitized) or is the defaults,
        and the graph holds the build alone."""
        dev, sizes = ctx.device, ctx.sizes
        if dev.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, got {dev}")
        static = {k: t.clone() for k, t in ctx.inputs.items()}
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            self._run(ctx.with_inputs(static))
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # replays read what the call copies into ``static``
            clean = inputs_stage.sanitized(ctx.mask, sizes, static) if raw else static
            bad = inputs_stage.value_flag(static, clean) if raw and self.check else None
            tensors = self._run(ctx.with_inputs(clean))
        mm = mask_mod_backend.mask_mod(ctx.mask, sizes, clean)
        bm = flex.from_tensors(tensors, ctx.q_len, ctx.kv_len, self.block_size, mm)
        log.info("%s: captured the build as a CUDA graph at %s", self.mask.name,
                 inputs_stage.sizes_text(sizes))
        return _Captured(graph, dict(sizes), static, bm, bad)
