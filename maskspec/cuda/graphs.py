"""Builds replayed as CUDA graphs: a build captured once per call shape, then replayed with
the call's inputs copied in, so a repeated build costs no Python analysis, binding, checks
on the host or kernel launches.

A graph is keyed by its call (``call_key``: sizes, block size, device, whether values are
checked, each given tensor's shape, dtype and device), so replaying given tensors skips
binding: their shapes were checked at capture, and inputs the call omits still hold the
defaults captured with it. Given tensors are copied in as they are and the graph sanitizes
them and, checking, computes the value check's flag, which ``deferred`` reads back later
(as a checked eager build does); inputs given as lists or numbers are bound on every call.

Two owners: ``fast.Builder(cuda_graph=True)`` keeps each graph's outputs, which the next
replay at that shape overwrites. The plain call (``CompiledMask.block_mask``) goes through
``PLAIN``: a configuration built a second time is captured, and every replay's outputs are
copied out in one copy (the graph packs the eight tensors into one buffer), so each
BlockMask it returns owns its tensors. Its graphs are kept within ``BUDGET`` bytes, least
recently used dropped first.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from maskspec import deferred, ir
from maskspec import inputs as inputs_stage
from maskspec.context import BuildContext
from maskspec.cuda import dispatch, plans

log = logging.getLogger("maskspec")

Run = Callable[[BuildContext], tuple[Tensor, ...]]


def call_key(mask: ir.MaskIR, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any,
             block_size: tuple[int, int], check: bool, inputs: Mapping[str, Any]) -> tuple:
    """What tells one call's graph from another's: the mask (its id: a graph holds its mask,
    so the id is not reused while the graph lives), the arguments, the current CUDA stream
    (a graph's buffers are only ever used in one stream's order), and each given tensor's
    shape, dtype and device in place of its values (only names when some input is not a
    tensor: those are bound on every call)."""
    tensors = given_tensors(inputs)
    given = tuple((k, t.shape, t.dtype, t.device) if tensors else k
                  for k, t in sorted(inputs.items()))
    on_cuda = isinstance(device, torch.device) and device.type == "cuda"
    stream = _raw_stream(device) if on_cuda else 0
    return (id(mask), B, H, Q_LEN, KV_LEN, device, stream, block_size, check, tensors, given)


def _raw_stream(device: torch.device) -> int:
    """The device's current CUDA stream as a number (inductor's cheap query where this
    torch has it: the plain call asks on every build)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None and device.index is not None:
        return raw(device.index)
    return torch.cuda.current_stream(device).cuda_stream


def plain_sizes(*sizes: Any) -> bool:
    """Whether the sizes are ints (or None), as a call that skips binding needs: 2.0 and
    True equal 2 and 1 as keys, but binding refuses them."""
    return all(type(n) is int or n is None for n in sizes)


def unbound(ctx: BuildContext, inputs: Mapping[str, Any], check: bool) -> bool:
    """Whether replays of this call can copy its inputs in unbound (the graph sanitizing
    and checking them): all given inputs are tensors, and checking them needs no host
    read of their values (a lookup whose index reads another input is bounded from the
    values, on the host, at every checked call)."""
    return (bool(inputs) and given_tensors(inputs)
            and not (check and inputs_stage.reads_values(ctx.mask, ctx.sizes)))


def given_tensors(inputs: Mapping[str, Any]) -> bool:
    """Whether every given input is a tensor (copied into a graph unbound)."""
    return all(isinstance(t, Tensor) for t in inputs.values())


@dataclass
class Captured:
    """One call shape's graph. ``static``: what replays copy the call's inputs into;
    ``clean``: what the build read (``static`` sanitized, or ``static``); ``tensors``: the
    eight outputs in the graph's memory; ``flat``: the same in one int32 buffer (the one the
    fused kernels wrote them in, else a copy laid out by ``packing``) (``packed`` captures
    only); ``bad``: the value check's flag (None: nothing checked)."""

    graph: torch.cuda.CUDAGraph
    ctx: BuildContext
    static: dict[str, Tensor]
    clean: dict[str, Tensor]
    tensors: tuple[Tensor, ...]
    flat: Tensor | None
    bad: Tensor | None
    raw: bool = False  # replays copy the caller's tensors in unbound

    @property
    def nbytes(self) -> int:
        """The graph's memory, about: its outputs (and their packed copy), its inputs."""
        held = [*self.static.values(), *self.clean.values()]
        if not _views_of(self.flat, self.tensors):
            held += self.tensors
        if self.flat is not None:
            held.append(self.flat)
        once = {id(t): t for t in held}.values()  # clean is static where not sanitized
        return sum(t.numel() * t.element_size() for t in once)

    def __post_init__(self) -> None:
        self.views: dict[Lead, tuple[View, ...]] = {None: _places(self.tensors, self.flat)}

    def unpacked(self, flat: Tensor, lead: Lead = None) -> tuple[Tensor, ...]:
        """The eight tensors as views of a copy of ``flat`` (``_places``); with
        ``lead`` (B, H), seen at that leading shape, broadcast where theirs is 1 (as
        ``expand`` would: one call per tensor instead of two)."""
        views = self.views.get(lead)
        if views is None:
            views = self.views[lead] = tuple(_broadcast(v, lead) for v in self.views[None])
        return tuple(flat.as_strided(*view) for view in views)


def _broadcast(view: View, lead: Lead) -> View:
    """``view`` with its two leading dims expanded to ``lead`` (stride 0 where they are 1)."""
    assert lead is not None
    shape, strides, offset = view
    for d in (0, 1):
        if shape[d] != lead[d] and shape[d] != 1:
            raise ValueError(f"cannot expand {shape} to the leading shape {lead}")
    return ((*lead, *shape[2:]),
            tuple(0 if shape[d] != lead[d] else strides[d] for d in (0, 1)) + strides[2:],
            offset)


Lead = tuple[int, int] | None  # (B, H) to see the outputs at, or None: as built
View = tuple[tuple[int, ...], tuple[int, ...], int]  # shape, strides, offset


def packing(tensors: tuple[Tensor, ...]) -> tuple[int, tuple[View, ...]]:
    """One buffer's length for these tensors, each contiguous at a ``plans.ALIGN`` offset,
    and their places in it (as ``as_strided`` arguments: one cheap call per tensor)."""
    key = tuple(tuple(t.shape) for t in tensors)
    found = _PACKINGS.get(key)
    if found is None:
        views, at = [], 0
        for shape in key:
            views.append((shape, plans.contiguous_strides(shape), at))
            at += plans.aligned(math.prod(shape))
        found = _PACKINGS[key] = (at, tuple(views))
    return found


_PACKINGS: dict[tuple, tuple[int, tuple[View, ...]]] = {}


def _shared(tensors: tuple[Tensor, ...]) -> Tensor | None:
    """The one int32 buffer all the tensors are views of, from its start (the fused
    kernels' outputs: ``plans.output_buffer``), or None."""
    storage = tensors[0].untyped_storage()
    if any(t.dtype != torch.int32 or t.untyped_storage().data_ptr() != storage.data_ptr()
           for t in tensors):
        return None
    return tensors[0].new_empty(0).set_(storage)


def _views_of(flat: Tensor | None, tensors: tuple[Tensor, ...]) -> bool:
    """Whether the tensors are views of ``flat`` (a buffer from its start)."""
    return flat is not None and all(t.untyped_storage().data_ptr() == flat.data_ptr()
                                    for t in tensors)


def _places(tensors: tuple[Tensor, ...], flat: Tensor | None) -> tuple[View, ...]:
    """Where the tensors lie in ``flat``: their own places where they are its views
    (``_shared``), else ``packing``'s (``packed_copy``)."""
    if _views_of(flat, tensors):
        return tuple((tuple(t.shape), t.stride(), t.storage_offset()) for t in tensors)
    return packing(tensors)[1]


def packed_copy(tensors: tuple[Tensor, ...]) -> Tensor:
    """The tensors as one int32 buffer: the buffer they already share (no copy), else a
    copy laid out by ``packing``."""
    shared = _shared(tensors)
    if shared is not None:
        return shared
    length, views = packing(tensors)
    flat = tensors[0].new_empty(length)
    for t, view in zip(tensors, views, strict=True):
        flat.as_strided(*view).copy_(t)
    return flat


def capture(ctx: BuildContext, raw: bool, check: bool, run: Run = dispatch.tensors,
            packed: bool = False) -> Captured:
    """Warm up on a side stream (JIT and compiles happen there), then capture ``run`` into a
    memory pool of its own. ``raw``: replays copy the caller's tensors in unbound, so the
    graph sanitizes them and (``check``) computes their check's flag; otherwise what
    replays read was bound (checked and sanitized) or is the defaults, and the graph holds
    the build alone. ``packed``: the graph also copies the outputs into one buffer."""
    dev = ctx.device
    if dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got {dev}")
    with torch.inference_mode(False):  # static buffers take in-place copies at any time
        static = {k: t.clone() for k, t in ctx.inputs.items()}

    def build() -> tuple[dict[str, Tensor], Tensor | None, tuple[Tensor, ...], Tensor | None]:
        clean, bad = (inputs_stage.flagged(ctx.mask, ctx.sizes, static, check) if raw
                      else (static, None))
        tensors = run(ctx.with_inputs(clean))
        return clean, bad, tensors, packed_copy(tensors) if packed else None

    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.inference_mode(False):
        build()  # the same calls as captured: what they compile or look up happens here
        # Not torch.cuda.graph, which synchronizes and empties the allocator's cache first:
        # the plain call captures inside training loops, whose cached memory must stay.
        # thread_local: other threads (a data loader, a compile) may use CUDA meanwhile.
        graph.capture_begin(capture_error_mode="thread_local")
        try:  # replays read what the call copies into ``static``
            clean, bad, tensors, flat = build()
        finally:
            graph.capture_end()
    torch.cuda.current_stream(dev).wait_stream(side)
    log.info("%s: captured the build as a CUDA graph at %s", ctx.mask.name,
             inputs_stage.sizes_text(ctx.sizes))
    return Captured(graph, ctx.with_inputs(dict(clean)), static, dict(clean), tensors, flat,
                    bad, raw)


def replay(cap: Captured, inputs: Mapping[str, Tensor], unchecked: Mapping[str, Tensor],
           check: bool) -> None:
    """Copy ``inputs`` into the graph and replay it; ``unchecked`` (those of them copied in
    unbound) have their value check's flag watched (``deferred``)."""
    if check:
        deferred.poll()
    for name, t in inputs.items():
        cap.static[name].copy_(t)
    cap.graph.replay()
    if check and cap.bad is not None and unchecked:
        ctx = cap.ctx
        report = functools.partial(inputs_stage.report_failed, ctx.mask, ctx.sizes,
                                   {**cap.static, **unchecked}, " (a CUDA graph replay)")
        deferred.watch(cap.bad, report)


def _budget() -> int:
    """BUDGET's default: MASKSPEC_GRAPH_MB megabytes (256; 0 turns the plain call's graphs
    off)."""
    try:
        return int(float(os.environ.get("MASKSPEC_GRAPH_MB", "256")) * 2**20)
    except ValueError:
        return 256 * 2**20


BUDGET = _budget()  # bytes the plain call's graphs may hold together
SEEN = 1024  # call keys remembered as built once (the second build of one captures it)


@contextlib.contextmanager
def off() -> Iterator[None]:
    """Plain calls without graphs inside the block (``BUDGET`` 0 there): what a build
    costs without them, or a reference to compare replays with."""
    global BUDGET
    old, BUDGET = BUDGET, 0
    try:
        yield
    finally:
        BUDGET = old


def eligible(device: torch.device) -> bool:
    """Whether the plain call's builds on ``device`` go through ``PLAIN``: CUDA, graphs on,
    and not inside a capture of the caller's (a build there is part of their graph)."""
    return (device.type == "cuda" and BUDGET > 0
            and not torch.cuda.is_current_stream_capturing())


class Replays:
    """The plain call's graphs: a configuration is captured the second time it is built
    (a one-off build never pays for a capture), replays copy their outputs out, and the
    graphs together hold at most ``BUDGET`` bytes (least recently used dropped first)."""

    def __init__(self) -> None:
        self.graphs: OrderedDict[tuple, Captured] = OrderedDict()
        # calls built once (True: capture at the next) or never to capture (False)
        self.seen: OrderedDict[tuple, bool] = OrderedDict()
        self.held = 0
        # a replay's copy in, replay and copy out are queued by one thread at a time (keys
        # hold the stream, so no two streams share a graph's buffers)
        self.lock = threading.Lock()

    def replayed(self, key: tuple, mask: ir.MaskIR, inputs: Mapping[str, Any],
                 check: bool, lead: Lead = None) -> Built | None:
        """A call from its graph, unbound: its own copy of the eight tensors (seen at
        ``lead``, if given: ``Captured.unpacked``) and the context they were built in
        (whose inputs, the clean values, the mask_mod reads); None when the call has no
        graph yet, or has inputs its graph does not take unbound (lists, numbers, values
        checked on the host: ``unbound``), which ``captured`` takes once they are bound."""
        with self.lock:
            cap = self.graphs.get(key)
            if cap is None or cap.ctx.mask is not mask or (inputs and not cap.raw):
                return None  # (not raw: checking reads values on the host; bind first)
            self.graphs.move_to_end(key)
            replay(cap, inputs, inputs, check)
            return _copied(cap, inputs, lead)

    def captured(self, key: tuple, ctx: BuildContext, inputs: Mapping[str, Any],
                 check: bool, lead: Lead = None) -> Built | None:
        """A call bound to ``ctx`` from its graph, captured now if the call was built once
        before and can be; None: build it without a graph."""
        with self.lock:
            cap = self.graphs.get(key)
            if cap is None or cap.ctx.mask is not ctx.mask:
                if not self.seen.get(key, False) or not _capturable(ctx):
                    self._saw(key, True)
                    return None
                cap = self._capture(key, ctx, unbound(ctx, inputs, check), check)
                if cap is None:
                    return None
            self.graphs.move_to_end(key)
            # bound: checked already, and the earlier checks polled (polling again could
            # raise this very call's failure, which is reported at a later call)
            replay(cap, {k: ctx.inputs[k] for k in inputs}, {}, False)
            return _copied(cap, inputs, lead)

    def _saw(self, key: tuple, again: bool) -> None:
        if self.seen.get(key, True) is False:
            return  # refused once: stays refused
        self.seen[key] = again
        self.seen.move_to_end(key)
        if len(self.seen) > SEEN:
            self.seen.popitem(last=False)

    def _capture(self, key: tuple, ctx: BuildContext, raw: bool, check: bool
                 ) -> Captured | None:
        """Capture the call's graph and keep it within the budget (a graph larger than the
        whole budget, or one CUDA refuses, is not kept and not tried again)."""
        try:
            cap = capture(ctx, raw, check, packed=True)
        except Exception as err:  # any failure: the build goes on without a graph
            log.info("%s: building without a CUDA graph (capture failed: %s)",
                     ctx.mask.name, err)
            cap = None
        if cap is None or _held(cap) > BUDGET:
            self._saw(key, False)
            return None
        self.graphs[key] = cap
        self.held += _held(cap)
        while self.held > BUDGET or len(self.graphs) > MAX_GRAPHS:
            _, old = self.graphs.popitem(last=False)
            self.held -= _held(old)
            if old.ctx.device.type == "cuda":  # its last replay may run on another stream
                torch.cuda.synchronize(old.ctx.device)
        return cap

    def clear(self) -> None:
        """Drop every graph and what was seen (their memory is freed with them)."""
        self.graphs.clear()
        self.seen.clear()
        self.held = 0


Built = tuple[tuple[Tensor, ...], BuildContext]
MAX_GRAPHS = 64  # graphs the plain call keeps, whatever their size
SEGMENT = 2 << 20  # bytes: a graph's pool holds at least one allocator segment


def _held(cap: Captured) -> int:
    """What a graph counts against BUDGET: its tensors, at least a segment."""
    return max(cap.nbytes, SEGMENT)


def _capturable(ctx: BuildContext) -> bool:
    """An ``eligible`` build the fused kernels ran before (compiled, shape fits:
    ``plans.cached``), not inside torch.compile."""
    return (eligible(ctx.device) and not ctx.mask.fallback
            and not torch.compiler.is_compiling() and plans.cached(ctx) is not None)


def _copied(cap: Captured, given: Mapping[str, Any], lead: Lead = None) -> Built:
    """A replay's outputs copied out of the graph (one copy of the packed buffer, seen at
    ``lead``), and its context over copies of the clean inputs the call gave (defaults are
    never written)."""
    assert cap.flat is not None
    out = cap.unpacked(cap.flat.clone(), lead)
    if not given:
        return out, cap.ctx
    clean = {k: (t.clone() if k in given else t) for k, t in cap.clean.items()}
    return out, cap.ctx.with_inputs(clean)


PLAIN = Replays()

