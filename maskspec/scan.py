"""Running maxima along the last dim (``t.cummax(-1).values``), as unchecked builds raise
document ids: on CUDA by a two-pass Triton scan, elsewhere by torch's.

torch scans a CUDA row in one thread block (about 23 µs for 8K ids, 55 µs for 128K even cut
in chunks); here the row is cut in chunks of ``CHUNK`` ids, each scanned by one program
(``tl.associative_scan``) which also writes its chunk's maximum, then every chunk is raised
to the largest maximum of the chunks before it. Two launches, exact for any values, and
capturable in a CUDA graph (no sync).
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

    @triton.jit
    def _chunk_kernel(x_ptr, out_ptr, tops_ptr, n, n_chunks, LOWEST: tl.constexpr,
                      CHUNK: tl.constexpr):
        """Chunk ``program_id(0)`` of row ``program_id(1)``: its running max, its maximum."""
        c, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
        at = c * CHUNK + tl.arange(0, CHUNK)
        live = at < n
        x = tl.load(x_ptr + row * n + at, mask=live, other=LOWEST)
        tl.store(out_ptr + row * n + at, tl.associative_scan(x, 0, larger), mask=live)
        tl.store(tops_ptr + row * n_chunks + c, tl.max(x, 0))

    @triton.jit
    def _raise_kernel(out_ptr, tops_ptr, n, n_chunks, LOWEST: tl.constexpr,
                      CHUNK: tl.constexpr, TOPS: tl.constexpr):
        """Chunk ``program_id(0)`` raised to the maxima of the row's chunks before it (read
        TOPS at a time: one compiled kernel for every row length)."""
        c, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
        before = tl.full((TOPS,), LOWEST, dtype=tops_ptr.dtype.element_ty)
        for k0 in range(0, c, TOPS):
            k = k0 + tl.arange(0, TOPS)
            top = tl.load(tops_ptr + row * n_chunks + k, mask=k < c, other=LOWEST)
            before = tl.maximum(before, top)
        at = c * CHUNK + tl.arange(0, CHUNK)
        live = at < n
        y = tl.load(out_ptr + row * n + at, mask=live)
        tl.store(out_ptr + row * n + at, tl.maximum(y, tl.max(before, 0)), mask=live)


MAX_GRID = 65535  # CUDA's limit on a grid's second and third dims: more rows, torch's scan


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """The device made current for launches on it (Triton launches on the current one);
    nothing off CUDA."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def running_max(t: torch.Tensor) -> torch.Tensor:
    """``t.cummax(-1).values``: by the two Triton kernels for int32/int64 CUDA tensors,
    by torch elsewhere."""
    n = t.shape[-1]
    rows = t.numel() // n if n else 0
    if triton is None or t.device.type != "cuda" or t.dtype not in _DTYPES or n == 0 \
            or rows == 0 or rows > MAX_GRID:
        return t.cummax(-1).values
    return chunked_max(t)


def chunked_max(t: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """``running_max`` by the kernels, ``chunk`` (a power of two) ids per program: on CUDA,
    or on the CPU under Triton's interpreter (TRITON_INTERPRET=1, as the tests run it)."""
    x = t.contiguous()
    n = x.shape[-1]
    rows, chunks = x.numel() // n, -(-n // chunk)
    out = torch.empty_like(x)
    tops = torch.empty(rows, chunks, dtype=x.dtype, device=x.device)
    lowest = torch.iinfo(x.dtype).min
    with on_device(x.device):
        _chunk_kernel[(chunks, rows)](x, out, tops, n, chunks, LOWEST=lowest, CHUNK=chunk)
        if chunks > 1:
            _raise_kernel[(chunks, rows)](out, tops, n, chunks, LOWEST=lowest, CHUNK=chunk,
                                          TOPS=TOPS)
    return out
