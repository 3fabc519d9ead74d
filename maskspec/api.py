"""The public face: load a spec, then build BlockMasks, mask_mods, dense masks, FA4 tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask

from maskspec import assemble, blocks, custom_op, deferred, dense, ir
from maskspec import mask_mod as mask_mod_backend
from maskspec.compiler import compile_spec
from maskspec.context import BuildContext
from maskspec.cuda import dispatch, graphs, plans
from maskspec.errors import did_you_mean
from maskspec.inputs import (
    bind_inputs,
    block_size_of,
    convert_inputs,
    device_of,
    sanitized,
    sizes_of,
)
from maskspec.parse import data_dir, parse, parse_file
from maskspec.targets import cp, cute, fa4, flex
from maskspec.targets import spec as spec_target


@dataclass(frozen=True)
class CompiledMask:
    """A compiled spec: every backend and target, at any shape and inputs."""

    ir: ir.MaskIR
    # How the build op inside torch.compile names this mask (custom_op.key_of), made once.
    op_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_key", custom_op.key_of(self.ir))

    @property
    def name(self) -> str:
        return self.ir.name

    def __repr__(self) -> str:
        inputs = ", ".join(d.name for d in self.ir.inputs) or "none"
        params = ", ".join(f"{k}={v}" for k, v in self.ir.params.items()) or "none"
        regions = " | ".join(t.name for t in self.ir.terms)
        return (f"CompiledMask({self.name}: {regions}; inputs {inputs}; params {params}; "
                f"from {self.ir.path})")

    def with_params(self, **params: int) -> CompiledMask:
        """The same spec compiled again with these params overriding its current ones."""
        return compile(self.ir.source, self.ir.path, **{**self.ir.params, **params})

    def __or__(self, other: CompiledMask) -> CompiledMask:
        """The union: (q, kv) allowed where either mask allows it; compiled as one spec
        (``targets.spec.union``), so its build stays analytic."""
        return compile(spec_target.union(self.ir, other.ir), f"<{self.name} | {other.name}>")

    def __and__(self, other: CompiledMask) -> CompiledMask:
        """The intersection: (q, kv) allowed where both masks allow it, as one spec."""
        return compile(spec_target.intersection(self.ir, other.ir),
                       f"<{self.name} & {other.name}>")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.ir.inputs)

    def _bind(
        self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any,
        inputs: dict[str, Any], check: bool = True,
        block_size: tuple[int, int] = (128, 128),
    ) -> BuildContext:
        """The build's context: checked sizes and device, inputs bound (and checked)."""
        sizes, dev = _placed(B, H, Q_LEN, KV_LEN, device, inputs)
        return BuildContext(self.ir, sizes, bind_inputs(self.ir, sizes, inputs, dev, check), dev,
                            block_size)

    def grid(
        self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any = None,
        BLOCK_SIZE: int | tuple[int, int] = 128, *, check_inputs: bool = True, **inputs: Any,
    ) -> blocks.BlockGrid:
        """The FULL/PARTIAL block grid, (B', H', Q_blocks, KV_blocks) bool each."""
        ctx = self._bind(B, H, Q_LEN, KV_LEN, device, inputs, check_inputs,
                         block_size_of(BLOCK_SIZE))
        return assemble.build_grid(ctx, dispatch.decide_blocks)

    def block_mask(
        self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any = None,
        BLOCK_SIZE: int | tuple[int, int] = 128, *, check_inputs: bool = True, **inputs: Any,
    ) -> BlockMask:
        """A flex_attention BlockMask, same argument order as ``create_block_mask``.

        B' (H') is 1 when the mask does not depend on the batch (head): flex_attention
        broadcasts it. Input values are checked (ranges, document ids in order); on CUDA
        the checks run on the device without a sync and a failure raises at a later build
        or at ``maskspec.wait_checks()``, the failing build having used the sanitized
        values (``inputs.sanitized``: clamped into range, ids made non-decreasing), which
        its mask_mod reads too. ``check_inputs=False`` skips the checks and builds from the
        sanitized values.
        """
        bs = block_size_of(BLOCK_SIZE)
        if torch.compiler.is_compiling():
            return self._traced_block_mask(B, H, Q_LEN, KV_LEN, device, bs, check_inputs, inputs)
        tensors, ctx = self._built(B, H, Q_LEN, KV_LEN, device, inputs, check_inputs, bs)
        mm = mask_mod_backend.mask_mod(self.ir, ctx.sizes, ctx.inputs)
        return flex.from_tensors(tensors, Q_LEN, KV_LEN, bs, mm)

    def _built(
        self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any,
        inputs: dict[str, Any], check: bool, bs: tuple[int, int],
        lead: tuple[int, int] | None = None,
    ) -> tuple[tuple[torch.Tensor, ...], BuildContext]:
        """The build's eight tensors and the context they were built in (whose inputs the
        mask_mod reads): on CUDA a configuration built before replays its CUDA graph
        (``graphs.PLAIN``: given tensors copied in unbound, checked on the device, outputs
        copied out; seen at the leading shape ``lead`` if given), else
        ``dispatch.tensors``."""
        dev = _build_device(device, inputs)
        key = None
        if graphs.eligible(dev) and graphs.plain_sizes(B, H, Q_LEN, KV_LEN):
            key = graphs.call_key(self.ir, B, H, Q_LEN, KV_LEN, plans.indexed(dev), bs, check,
                                  inputs)
            hit = graphs.PLAIN.replayed(key, self.ir, inputs, check, lead)
            if hit is not None:
                return hit
        ctx = self._bind(B, H, Q_LEN, KV_LEN, device, inputs, check, bs)
        hit = None if key is None else graphs.PLAIN.captured(key, ctx, inputs, check, lead)
        return (dispatch.tensors(ctx), ctx) if hit is None else hit

    def _traced_block_mask(
        self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any,
        bs: tuple[int, int], check_inputs: bool, inputs: dict[str, Any],
    ) -> BlockMask:
        """``block_mask`` inside torch.compile: the build is one custom op (``custom_op``),
        which runs the checks and the kernels on concrete values; the mask_mod reads what
        the op reads: the sanitized values (equal to the given ones where they pass)."""
        sizes, dev = _placed(B, H, Q_LEN, KV_LEN, device, inputs)
        given = convert_inputs(self.ir, sizes, inputs, dev)
        tensors = custom_op.block_tensors(
            self.op_key, [sizes[k] for k in ir.SIZES], list(bs),
            [given[d.name] for d in self.ir.inputs], check_inputs, dev)
        mm = mask_mod_backend.mask_mod(self.ir, sizes, sanitized(self.ir, sizes, given))
        return flex.from_tensors(tuple(tensors), Q_LEN, KV_LEN, bs, mm)

    def mask_mod(
        self, *, B: int | None = None, H: int | None = None, Q_LEN: int | None = None,
        KV_LEN: int | None = None, device: Any = None, **inputs: Any,
    ) -> mask_mod_backend.MaskMod:
        """The element mask_mod, for ``create_block_mask`` or ``flex_attention``.

        Q_LEN / KV_LEN are needed when the spec uses them; B / H shape default inputs.
        """
        needed = self.ir.sizes_used()
        for k, v in (("Q_LEN", Q_LEN), ("KV_LEN", KV_LEN)):
            if v is None and k in needed:
                raise ValueError(f"spec `{self.name}` uses {k}: pass mask_mod({k}=...)")
        given = {k for k, v in inputs.items() if v is not None}
        for var, size, value in (("b", "B", B), ("h", "H", H), ("q", "Q_LEN", Q_LEN)):
            used = sorted(given & self.ir.inputs_indexed_by(var))
            if value is None and used:
                raise ValueError(
                    f"input `{used[0]}` of spec `{self.name}` is indexed by {var}: pass "
                    f"mask_mod({size}=...) so its lookups can be checked at that size"
                )
        ctx = self._bind(B, H, Q_LEN or 1, KV_LEN or 1, device, inputs)
        return mask_mod_backend.mask_mod(self.ir, ctx.sizes, ctx.inputs)

    def dense(
        self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any = None,
        **inputs: Any,
    ) -> torch.Tensor:
        """The reference bool mask [B, H, Q_LEN, KV_LEN] (small sizes: it is Q×KV)."""
        ctx = self._bind(B, H, Q_LEN, KV_LEN, device, inputs)
        return dense.dense(self.ir, ctx.sizes, ctx.inputs, ctx.device)

    def cp_block_mask(
        self, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, mesh: Any = None, *,
        rank: int | None = None, world_size: int | None = None,
        BLOCK_SIZE: int | tuple[int, int] = 128, load_balancer: Any = "head_tail",
        device: Any = None, check_inputs: bool = True, **inputs: Any,
    ) -> BlockMask:
        """This rank's BlockMask under torch context parallelism (flex_attention, K/V gathered).

        Local queries × all keys in torch's load-balanced order, with torch's blocks and
        mask_mod, at any block size; KV_LEN = R·Q_LEN lays out R key rounds (EAGLE-3), see
        ``maskspec.targets.cp``. Give ``mesh`` (1-D DeviceMesh) or ``rank`` and ``world_size``.
        """
        rank, world_size, device = cp.placement(mesh, rank, world_size, device)
        cp.check_layout(Q_LEN, KV_LEN, world_size, rank)
        ctx = self._bind(B, H, Q_LEN, KV_LEN, device, inputs, check_inputs,
                         block_size_of(BLOCK_SIZE))
        order = cp.sharding(self.ir, load_balancer, Q_LEN, world_size, ctx.device, ctx.inputs,
                            ctx.sizes["B"])
        mm = mask_mod_backend.mask_mod(self.ir, ctx.sizes, ctx.inputs)
        return cp.block_mask(ctx, mm, order, rank, world_size)

    def fa4_block_sparse(
        self, B: int, H: int, Q_LEN: int, KV_LEN: int, device: Any = None,
        BLOCK_SIZE: int | tuple[int, int] = (128, 128), *, arch: int | None = None,
        check_inputs: bool = True, **inputs: Any,
    ) -> tuple[Any, Any]:
        """FlashAttention-4 (forward, backward) block-sparse tensors, FA4's block-size rules:
        the same build as ``block_mask`` (the fused kernels on CUDA), laid out for FA4."""
        tensors, ctx = self._fa4_built(B, H, Q_LEN, KV_LEN, device, BLOCK_SIZE, arch,
                                       check_inputs, inputs)
        return fa4.block_sparse(tensors, B, H, ctx.block_size)

    def fa4(
        self, B: int, H: int, Q_LEN: int, KV_LEN: int, device: Any = None,
        BLOCK_SIZE: int | tuple[int, int] | None = None, *, arch: int | None = None,
        check_inputs: bool = True, **inputs: Any,
    ) -> fa4.FA4Args:
        """FlashAttention-4 arguments: ``flash_attn_func(q, k, v, **m.fa4(...).kwargs())``.

        The generated CuTe mask_mod, the inputs as aux_tensors and forward/backward
        block-sparse tensors; BLOCK_SIZE defaults to the finest FA4 tiles on the device.
        """
        tensors, ctx = self._fa4_built(B, H, Q_LEN, KV_LEN, device, BLOCK_SIZE, arch,
                                       check_inputs, inputs)
        fwd, bwd = fa4.block_sparse(tensors, B, H, ctx.block_size)
        return fa4.FA4Args(
            cute.mask_mod(self.ir, ctx.sizes), cute.aux_tensors(self.ir, ctx.inputs), fwd, bwd
        )

    def _fa4_built(
        self, B: int, H: int, Q_LEN: int, KV_LEN: int, device: Any,
        BLOCK_SIZE: int | tuple[int, int] | None, arch: int | None, check_inputs: bool,
        inputs: dict[str, Any],
    ) -> tuple[tuple[torch.Tensor, ...], BuildContext]:
        """An FA4 build: the device's arch, the block size checked against FA4's rules
        (None: the finest tiles of the arch), then ``_built`` (block_mask's build, graph
        replays included). The CuTe mask_mod's aux tensors read the context's inputs, as
        the build did."""
        bs = None if BLOCK_SIZE is None else block_size_of(BLOCK_SIZE)
        dev = _build_device(device, inputs)
        sm = fa4.sm_arch(dev, arch)
        bs = block_size_of(fa4.default_block_size(sm)) if bs is None else bs
        fa4.check_block_size(bs, sm)
        return self._built(B, H, Q_LEN, KV_LEN, dev, inputs, check_inputs, bs, (B, H))


def _build_device(device: Any, inputs: dict[str, Any]) -> torch.device:
    """The checked device to build on: ``device``, else the first tensor input's, else CPU."""
    if device is None:
        tensors = (v for v in inputs.values() if isinstance(v, torch.Tensor))
        device = next((v.device for v in tensors), torch.device("cpu"))
    return device_of(device)


def _placed(
    B: int | None, H: int | None, Q_LEN: int, KV_LEN: int, device: Any, inputs: dict[str, Any]
) -> tuple[dict[str, int], torch.device]:
    """The checked sizes (B and H default to 1) and device of a build."""
    return (sizes_of(1 if B is None else B, 1 if H is None else H, Q_LEN, KV_LEN),
            _build_device(device, inputs))


def wait_checks(device: Any = None) -> None:
    """Wait for the input checks that CUDA builds ran on the device (on ``device``, or on
    every one) and raise the first failure, as a ValueError naming the input, the value
    and the build. Builds also read the landed ones as they start, so a failure surfaces
    at a later build without this; call it where an error must not wait (before a
    checkpoint, at the end of a run)."""
    deferred.wait(None if device is None else plans.indexed(_build_device(device, {})))


def compile(source: str, path: str = "<spec>", *, strict: bool = False,
            **params: int) -> CompiledMask:
    """Compile spec text (``params`` override the spec's defaults). ``strict=True`` refuses
    a spec whose blocks need the element fallback, with a located MaskSpecError."""
    return CompiledMask(compile_spec(parse(source, path), strict, **params))


def shipped_specs() -> dict[str, Path]:
    """The spec library that ships with maskspec, by name."""
    root = data_dir("specs")
    return {p.name[: -len(".mask")]: Path(str(p)) for p in root.iterdir()
            if p.name.endswith(".mask")}


def load(path: str | Path, *, strict: bool = False, **params: int) -> CompiledMask:
    """Parse, validate and compile a `.mask` file, or a shipped spec by name ("eagle3");
    ``strict`` as in ``compile``."""
    p = Path(path)
    if not p.exists():
        shipped = shipped_specs()
        if p.suffix == "" and str(path) in shipped:
            p = shipped[str(path)]
        else:
            hint = did_you_mean(p.stem, list(shipped))
            raise FileNotFoundError(
                f"no spec file {str(path)!r}" + (f"; {hint}" if hint else "")
                + f" (shipped specs, loadable by name: {', '.join(sorted(shipped))})"
            )
    return CompiledMask(compile_spec(parse_file(p), strict, **params))
