"""Input values as unchecked builds read them (``inputs.sanitized``): clamped into their
declared range and, for document ids, raised to their running maximum along the last dim
(``t.clamp(lo, hi).cummax(-1).values``), optionally setting a flag where any value changed
(what a checked build reports: the values failed their checks). On CUDA one or two Triton
launches, elsewhere torch's.

torch scans a CUDA row in one thread block (about 23 µs for 8K ids, 55 µs for 128K even cut
in chunks), and clamping and comparing add three launches; here the row is cut in chunks of
``CHUNK`` values, each clamped and scanned by one program (``tl.associative_scan``) which
also writes its chunk's maximum and flags a change, then every chunk is raised to the
largest maximum of the chunks before it. Exact for any values, and capturable in a CUDA
graph (no sync).
"""

from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: torch's scan serves
    triton = None

CHUNK = 2048  # ids one program scans
TOPS = 256  # chunk maxima a raising program reads at a time
_DTYPES = (torch.int32, torch.int64)

if triton is not None:
    @triton.jit
    def larger(a, b):
        """The combine of a running maximum (``tl.associative_scan``)."""
        return tl.maximum(a, b)

    @triton.jit(do_not_specialize=["lo", "hi"])
    def _chunk_kernel(x_ptr, out_ptr, tops_ptr, flag_ptr, n, n_chunks, lo, hi,
                      LOWEST: tl.constexpr, CHUNK: tl.constexpr, RUNNING: tl.constexpr,
                      FLAG: tl.constexpr):
        """Chunk ``program_id(0)`` of row ``program_id(1)`` clamped into [lo, hi] and
        (RUNNING) its running max, with its maximum; (FLAG) the flag set where a value
        changed."""
        c, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
        at = c * CHUNK + tl.arange(0, CHUNK)
        live = at < n
        x = tl.load(x_ptr + row * n + at, mask=live, other=LOWEST)
        y = tl.minimum(tl.maximum(x, lo), hi).to(x.dtype)
        if RUNNING:
            y = tl.associative_scan(y, 0, larger)
            tl.store(tops_ptr + row * n_chunks + c, tl.max(tl.where(live, y, LOWEST), 0))
        tl.store(out_ptr + row * n + at, y, mask=live)
        if FLAG:
            tl.atomic_max(flag_ptr, 1, mask=tl.max((live & (y != x)).to(tl.int32), 0) > 0)

    @triton.jit
    def _raise_kernel(out_ptr, tops_ptr, flag_ptr, n, n_chunks, LOWEST: tl.constexpr,
                      CHUNK: tl.constexpr, TOPS: tl.constexpr, FLAG: tl.constexpr):
        """Chunk ``program_id(0)`` raised to the maxima of the row's chunks before it (read
        TOPS at a time: one compiled kernel for every row length); (FLAG) the flag set
        where that raised a value."""
        c, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
        before = tl.full((TOPS,), LOWEST, dtype=tops_ptr.dtype.element_ty)
        for k0 in range(0, c, TOPS):
            k = k0 + tl.arange(0, TOPS)
            top = tl.load(tops_ptr + row * n_chunks + k, mask=k < c, other=LOWEST)
            before = tl.maximum(before, top)
        at = c * CHUNK + tl.arange(0, CHUNK)
        live = at < n
        y = tl.load(out_ptr + row * n + at, mask=live, other=LOWEST)
        z = tl.maximum(y, tl.max(before, 0))
        tl.store(out_ptr + row * n + at, z, mask=live)
        if FLAG:
            tl.atomic_max(flag_ptr, 1, mask=tl.max((live & (z != y)).to(tl.int32), 0) > 0)


MAX_GRID = 65535  # CUDA's limit on a grid's second and third dims: more rows, torch's scan


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """The device made current for launches on it (Triton launches on the current one);
    nothing off CUDA."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def cleaned(t: torch.Tensor, lo: int, hi: int, running: bool,
            flag: torch.Tensor | None = None) -> torch.Tensor:
    """``t.clamp(lo, hi)``, and (``running``) its running maxima along the last dim; with
    ``flag`` (a 0-dim int32 on t's device), the flag set to 1 where that changed a value.
    By the Triton kernels for int32/int64 CUDA tensors, by torch elsewhere and inside
    torch.compile (which traces torch's ops into its graph)."""
    n = t.shape[-1] if t.dim() else 0
    rows = t.numel() // n if n else 0
    if triton is None or t.device.type != "cuda" or t.dtype not in _DTYPES or n == 0 \
            or rows == 0 or rows > MAX_GRID or torch.compiler.is_compiling() \
            or not _meets(t.dtype, lo, hi):
        return cleaned_by_torch(t, lo, hi, running, flag)
    return chunked(t, lo, hi, running, flag)


def _meets(dtype: torch.dtype, lo: int, hi: int) -> bool:
    """Whether [lo, hi] meets the dtype's range (else no value of it can be clamped into
    it, and torch's clamp raises)."""
    info = torch.iinfo(dtype)
    return lo <= info.max and hi >= info.min


def cleaned_by_torch(t: torch.Tensor, lo: int, hi: int, running: bool,
                     flag: torch.Tensor | None = None) -> torch.Tensor:
    """``cleaned`` by torch's ops (what the standalone module runs, too)."""
    out = t.clamp(lo, hi)
    if running:
        out = out.cummax(-1).values
    if flag is not None:
        flag.bitwise_or_((out != t).any())
    return out


def chunked(t: torch.Tensor, lo: int, hi: int, running: bool,
            flag: torch.Tensor | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """``cleaned`` by the kernels, ``chunk`` (a power of two) values per program: on CUDA,
    or on the CPU under Triton's interpreter (TRITON_INTERPRET=1, as the tests run it)."""
    x = t.contiguous()
    n = x.shape[-1]
    rows, chunks = x.numel() // n, -(-n // chunk)
    out = torch.empty_like(x)
    tops = torch.empty(rows, chunks if running else 1, dtype=x.dtype, device=x.device)
    info = torch.iinfo(x.dtype)
    assert _meets(x.dtype, lo, hi), "bounds wholly outside the dtype: torch's clamp refuses"
    lo, hi = max(lo, info.min), min(hi, info.max)  # (bounds past the dtype clamp nothing)
    marked = flag if flag is not None else tops  # (an unused pointer where not flagged)
    with on_device(x.device):
        _chunk_kernel[(chunks, rows)](x, out, tops, marked, n, chunks, lo, hi,
                                      LOWEST=info.min, CHUNK=chunk, RUNNING=running,
                                      FLAG=flag is not None)
        if running and chunks > 1:
            _raise_kernel[(chunks, rows)](out, tops, marked, n, chunks, LOWEST=info.min,
                                          CHUNK=chunk, TOPS=TOPS, FLAG=flag is not None)
    return out
