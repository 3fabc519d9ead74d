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

from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask

from maskspec import ir, lower
from maskspec import mask_mod as mask_mod_backend
from maskspec.api import CompiledMask
from maskspec.context import BuildContext
from maskspec.cuda import dispatch, graphs
from maskspec.inputs import block_size_of
from maskspec.targets import flex


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
        self._graphs: dict[tuple, tuple[graphs.Captured, BlockMask]] = {}

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
        """Copy the given inputs into the call's graph (captured on first use) and replay it
        (``graphs``: given tensors are copied in unbound, the graph sanitizing and checking
        them, where ``graphs.unbound`` allows; other inputs are bound on every call)."""
        key = graphs.call_key(self.mask.ir, B, H, Q_LEN, KV_LEN, str(device), self.block_size,
                              self.check, inputs)
        found = self._graphs.get(key)
        if found is not None and (found[0].raw or not inputs):
            graphs.replay(found[0], inputs, inputs, self.check)
            return found[1]
        ctx = self._bind(B, H, Q_LEN, KV_LEN, device, inputs)
        if found is None and not self._compiled(ctx):
            return self._eager(ctx)  # captured once the kernels compiled
        if found is None:
            raw = graphs.unbound(ctx, inputs, self.check)
            found = self._graphs[key] = self._capture(ctx, raw)
        # bound: checked, and the earlier checks polled (again could raise this call's own)
        graphs.replay(found[0], {k: ctx.inputs[k] for k in inputs}, {}, False)
        return found[1]

    def _compiled(self, ctx: BuildContext) -> bool:
        """Whether the generated kernels are ready to capture (``dispatch.compiled``; the
        compiled row stage compiles when first called, ready or not)."""
        return self.use_compiled or ctx.device.type != "cuda" or dispatch.compiled(ctx)

    def _capture(self, ctx: BuildContext, raw: bool) -> tuple[graphs.Captured, BlockMask]:
        """The call's graph (``graphs.capture`` of this Builder's pipeline) and the BlockMask
        over its outputs, whose mask_mod reads what the graph's build reads."""
        cap = graphs.capture(ctx, raw, self.check, self._run)
        mm = mask_mod_backend.mask_mod(ctx.mask, cap.ctx.sizes, cap.clean)
        return cap, flex.from_tensors(cap.tensors, ctx.q_len, ctx.kv_len, self.block_size, mm)
