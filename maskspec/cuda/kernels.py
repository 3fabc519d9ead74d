"""The fixed Triton kernels of CUDA builds and the helpers generated kernels import.

``count_rows`` turns a chunk of rows' slots into difference arrays (the spec's generated
count kernel, ``generator``, calls it; ``rows_count_kernel`` does for slots given
as tensors); ``finish_kernel`` classifies each row block's key blocks and writes the ordered
kv-direction indices; ``column_strip_kernel`` writes the q-direction ones;
``edges_chunk_kernel`` and ``edges_fix_kernel`` find where each document's run of ids starts
and ends (what generated code reads for document edges). ``floordiv``, ``mod`` and ``clamp``
give generated code the spec's arithmetic (Python's floor division, clamped input reads).
``plans`` launches them.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch path serves every build
    triton = None

if triton is not None:
    from maskspec.scan import larger

    _PARTIAL, _FULL = tl.constexpr(1), tl.constexpr(2)  # block classes in the byte grid

    @triton.jit
    def _add_ranges(row_ptr, first, last, ok, n_kv):
        """Add the difference array of the [first, last) block ranges (where ok) into the
        zeroed row (ends at n_kv are dropped: no block lies past it)."""
        tl.atomic_add(row_ptr + first, 1, mask=ok & (first < n_kv), sem="relaxed")
        tl.atomic_add(row_ptr + last, -1, mask=ok & (last < n_kv), sem="relaxed")

    @triton.jit
    def _store_ordered(flag, pos, real, seen0, count, idx_ptrs, AXIS: tl.constexpr):
        """One chunk of an ordered index row (``blocks.ordered``'s layout: set positions
        first, ascending, then the unset ones, so every row is a permutation), given the set
        positions before the chunk (seen0) and in the whole row (count); returns the new
        seen0."""
        flag = flag & real
        seen = seen0 + tl.cumsum(flag.to(tl.int32), AXIS)
        slot = tl.where(flag, seen - 1, count + pos - seen)
        tl.store(idx_ptrs + slot, pos, mask=real)
        return seen0 + tl.sum(flag.to(tl.int32), AXIS, keep_dims=True)

    @triton.jit
    def _tighten(lo, hi, ph, st, ln):
        """A slot's first allowed key, one past its last, whether it allows any
        (``blocks.tighten``), and the periods of its first and last key (int32)."""
        qa = floordiv(lo - ph, st)
        r = lo - ph - qa * st
        inside = r < ln
        first = tl.where(inside, lo, lo - r + st)
        qe = floordiv(hi - 1 - ph, st)
        e = hi - 1 - ph - qe * st
        end = tl.where(e < ln, hi, hi - 1 - e + ln)
        live = (lo < hi) & (ln > 0) & (first < end)
        return first, end, live, tl.where(inside, qa, qa + 1), qe

    @triton.jit
    def _add_tight(row_ptr, lo, hi, ph, st, ln, ok, q_lo, q_hi, n_kv, pieces,
                   KV_BS: tl.constexpr):
        """Add the key blocks a tightened family's pieces touch (``blocks.family_ranges``):
        its hull where no block fits between pieces (or it has one), else each piece's, up
        to ``pieces`` of them."""
        fine = ok & ((st - ln < KV_BS) | (q_lo == q_hi))
        _add_ranges(row_ptr, lo // KV_BS, (hi + KV_BS - 1) // KV_BS, fine, n_kv)
        coarse = ok & ~fine
        start = ph + q_lo * st
        for j in range(pieces):
            s = start + j * st
            a = tl.maximum(lo, s)
            b = tl.minimum(hi, s + ln)
            _add_ranges(row_ptr, a // KV_BS, (b + KV_BS - 1) // KV_BS, coarse & (s < hi), n_kv)

    @triton.jit
    def _add_family(row_ptr, lo, hi, ph, st, ln, live, n_kv, pieces, KV_BS: tl.constexpr):
        """``_add_tight`` of a family clipped to [lo, hi), tightened first."""
        lo, hi, ok, q_lo, q_hi = _tighten(lo, hi, ph, st, ln)
        _add_tight(row_ptr, lo, hi, ph, st, ln, ok & live, q_lo, q_hi, n_kv, pieces, KV_BS)

    @triton.jit
    def _add_open_gaps(gaps_ptr, lo, hi, ph, st, ln, live, n_kv, gap_pieces,
                       KV_BS: tl.constexpr):
        """Add the blocks the gaps of strided slots touch where the row's intervals leave
        them open (``blocks._open_gaps``): each strided slot (axis 1) against each gap of
        the intervals' union (axis 2: after an interval end no interval covers, up to the
        next interval start), and against the gap before the first interval."""
        strided = live & (ln < st)
        plain = live & ~strided
        far = tl.full((1,), 2**31 - 1, tl.int32)
        starts = tl.where(plain, lo, far)[:, None, :]
        ends = tl.where(plain, hi, -1)[:, None, :]
        end = tl.where(plain, hi, -1)[:, :, None]
        covered = tl.max(((starts <= end) & (end < ends)).to(tl.int32), 2)
        gap_end = tl.min(tl.where(starts > end, starts, far), 2)
        gap_ok = plain & (covered == 0)
        glo = tl.maximum(hi[:, None, :], lo[:, :, None])
        ghi = tl.minimum(gap_end[:, None, :], hi[:, :, None])
        ok = strided[:, :, None] & gap_ok[:, None, :]
        _add_family(gaps_ptr, glo, ghi, (ph + ln)[:, :, None], st[:, :, None],
                    (st - ln)[:, :, None], ok, n_kv, gap_pieces, KV_BS)
        first = tl.min(tl.where(plain, lo, far), 1)[:, None]
        _add_family(gaps_ptr, lo, tl.minimum(hi, first), ph + ln, st, st - ln, strided, n_kv,
                    gap_pieces, KV_BS)

    @triton.jit
    def count_rows(lo, hi, ph, st, ln, ok, in_block, touched_ptr, gaps_ptr, n_kv, pieces,
                   gap_pieces, KV_BS: tl.constexpr, FAMILY: tl.constexpr):
        """Rows' (R, KP) slots → their difference arrays, added into the zeroed index rows of
        the row block (which double as scratch): the key blocks each slot's pieces touch,
        and those each gap of the row's keys touches. A block is FULL when no row of the
        block has a gap in it; rows past Q_LEN (ok false, in_block true) are all gap.

        Gaps between the slots' hulls: a gap starts at 0 or at a hull's end that no hull
        covers, and runs to the next hull start: O(K²) compares per row, no sort. With a
        strided family (FAMILY), its own gaps that the row's intervals leave open count too.
        All in int32: live slots lie in [0, KV_LEN] and ``fits`` keeps the family's
        arithmetic below 2**31."""
        lo, hi = lo.to(tl.int32), hi.to(tl.int32)
        if FAMILY:
            ph, st, ln = ph.to(tl.int32), st.to(tl.int32), ln.to(tl.int32)
            lo, hi, live, q_lo, q_hi = _tighten(lo, hi, ph, st, ln)
            live = live & ok
            _add_tight(touched_ptr, lo, hi, ph, st, ln, live, q_lo, q_hi, n_kv, pieces, KV_BS)
        else:  # plain intervals
            live = ok & (lo < hi)
            _add_ranges(touched_ptr, lo // KV_BS, (hi + KV_BS - 1) // KV_BS, live, n_kv)
        lo, hi = tl.where(live, lo, 0), tl.where(live, hi, 0)
        far = tl.full((1,), 2**31 - 1, tl.int32)  # past every key
        starts = tl.where(live, lo, far)[:, None, :]  # (R, 1, KP): hull k
        ends = hi[:, None, :]
        end = hi[:, :, None]  # (R, KP, 1): the end of hull j
        covered = tl.max(((starts <= end) & (end < ends)).to(tl.int32), 2)
        gap_end = tl.min(tl.where(starts > end, starts, far), 2).to(tl.int64)
        _add_ranges(gaps_ptr, hi // KV_BS, ((gap_end + KV_BS - 1) // KV_BS).to(tl.int32),
                    live & (covered == 0), n_kv)
        first = tl.min(tl.where(live, lo, far), 1)[:, None].to(tl.int64)  # before every hull
        _add_ranges(gaps_ptr, 0 * first, (first + KV_BS - 1) // KV_BS,
                    in_block & (first > 0), n_kv)
        if FAMILY:
            _add_open_gaps(gaps_ptr, lo, hi, ph, st, ln, live, n_kv, gap_pieces, KV_BS)

    @triton.jit(do_not_specialize=["n_q", "n_kv"])
    def finish_kernel(kv_num_ptr, kv_idx_ptr, full_kv_num_ptr, full_kv_idx_ptr, cls_ptr, n_q,
                       n_kv, CHUNK: tl.constexpr, FROM_CLS: tl.constexpr):
        """One row block, once all its rows were counted: classify its key blocks (one byte
        each) from the difference arrays (gaps in full_kv_idx, touches in kv_idx), then
        overwrite those with the ordered kv_* indices, a chunk of key blocks at a time.
        ``FROM_CLS``: the byte grid is already written (the element fallback's kernel,
        ``decide``); only the indices are."""
        bh = tl.program_id(0).to(tl.int64)
        qb = tl.program_id(1)
        out = (bh * n_q + qb) * n_kv
        num = bh * n_q + qb + tl.zeros((1,), tl.int64)
        gaps = tl.zeros((1,), tl.int32)
        touched = tl.zeros((1,), tl.int32)
        n_partial = tl.zeros((1,), tl.int32)
        n_full = tl.zeros((1,), tl.int32)
        for c0 in range(0, n_kv, CHUNK):
            cols = c0 + tl.arange(0, CHUNK)
            real = cols < n_kv
            if FROM_CLS:
                cls = tl.load(cls_ptr + out + cols, mask=real, other=0)
                full, partial = (cls == _FULL) & real, (cls == _PARTIAL) & real
            else:
                d_gap = tl.load(full_kv_idx_ptr + out + cols, mask=real, other=0,
                                cache_modifier=".cg")
                d_touch = tl.load(kv_idx_ptr + out + cols, mask=real, other=0,
                                  cache_modifier=".cg")
                full = (gaps + tl.cumsum(d_gap, 0) == 0) & real
                partial = (touched + tl.cumsum(d_touch, 0) > 0) & ~full & real
                gaps += tl.sum(d_gap, 0, keep_dims=True)
                touched += tl.sum(d_touch, 0, keep_dims=True)
                cls = tl.where(full, _FULL, tl.where(partial, _PARTIAL, 0)).to(tl.int8)
                tl.store(cls_ptr + out + cols, cls, mask=real)
            n_full += tl.sum(full.to(tl.int32), 0, keep_dims=True)
            n_partial += tl.sum(partial.to(tl.int32), 0, keep_dims=True)
        tl.debug_barrier()
        seen_partial = tl.zeros((1,), tl.int32)
        seen_full = tl.zeros((1,), tl.int32)
        for c0 in range(0, n_kv, CHUNK):
            cols = c0 + tl.arange(0, CHUNK)
            real = cols < n_kv
            cls = tl.load(cls_ptr + out + cols, mask=real, other=0, cache_modifier=".cg")
            seen_partial = _store_ordered(cls == _PARTIAL, cols, real, seen_partial, n_partial,
                                          kv_idx_ptr + out, 0)
            seen_full = _store_ordered(cls == _FULL, cols, real, seen_full, n_full,
                                       full_kv_idx_ptr + out, 0)
        tl.store(kv_num_ptr + num, n_partial)
        tl.store(full_kv_num_ptr + num, n_full)

    @triton.jit(do_not_specialize=["pieces", "gap_pieces"])
    def rows_count_kernel(
        lo_ptr, hi_ptr, ph_ptr, st_ptr, ln_ptr, kv_idx_ptr, full_kv_idx_ptr, q_len, n_q, n_kv,
        pieces, gap_pieces, K: tl.constexpr, KP: tl.constexpr, Q_BS: tl.constexpr, RC: tl.constexpr,
        KV_BS: tl.constexpr, FAMILY: tl.constexpr,
    ):
        """RC rows of a row block of given slots (B', H', Q_LEN, K): load, count_rows."""
        bh = tl.program_id(0).to(tl.int64)
        qb = tl.program_id(1)
        rows = tl.program_id(2) * RC + tl.arange(0, RC)[:, None]
        row = qb.to(tl.int64) * Q_BS + rows
        ok = (rows < Q_BS) & (row < q_len)
        j = tl.arange(0, KP)[None, :]
        offs = (bh * q_len + row) * K + j
        real = ok & (j < K)
        lo = tl.load(lo_ptr + offs, mask=real, other=0)
        hi = tl.load(hi_ptr + offs, mask=real, other=0)
        ph = tl.load(ph_ptr + offs, mask=real, other=0)
        st = tl.load(st_ptr + offs, mask=real, other=1)
        ln = tl.load(ln_ptr + offs, mask=real, other=1)
        out = (bh * n_q + qb) * n_kv
        count_rows(lo, hi, ph, st, ln, ok, rows < Q_BS, kv_idx_ptr + out, full_kv_idx_ptr + out,
                   n_kv, pieces, gap_pieces, KV_BS, FAMILY)

    @triton.jit(do_not_specialize=["n_q", "n_kv"])
    def column_strip_kernel(
        cls_ptr, q_num_ptr, q_idx_ptr, full_q_num_ptr, full_q_idx_ptr, n_q, n_kv,
        QC: tl.constexpr, STRIP: tl.constexpr,
    ):
        """One strip of key blocks: count the classes down its columns, then write q_*."""
        bh = tl.program_id(0).to(tl.int64)
        kb = tl.program_id(1) * STRIP + tl.arange(0, STRIP)[None, :]
        n_partial = tl.zeros((1, STRIP), tl.int32)
        n_full = tl.zeros((1, STRIP), tl.int32)
        for q0 in range(0, n_q, QC):
            qb = q0 + tl.arange(0, QC)[:, None]
            real = (qb < n_q) & (kb < n_kv)
            cls = tl.load(cls_ptr + (bh * n_q + qb) * n_kv + kb, mask=real, other=0)
            n_partial += tl.sum((cls == _PARTIAL).to(tl.int32), 0, keep_dims=True)
            n_full += tl.sum((cls == _FULL).to(tl.int32), 0, keep_dims=True)
        seen_partial = tl.zeros((1, STRIP), tl.int32)
        seen_full = tl.zeros((1, STRIP), tl.int32)
        idx = (bh * n_kv + kb) * n_q
        for q0 in range(0, n_q, QC):
            qb = q0 + tl.arange(0, QC)[:, None]
            real = (qb < n_q) & (kb < n_kv)
            cls = tl.load(cls_ptr + (bh * n_q + qb) * n_kv + kb, mask=real, other=0)
            seen_partial = _store_ordered(cls == _PARTIAL, qb, real, seen_partial, n_partial,
                                          q_idx_ptr + idx, 0)
            seen_full = _store_ordered(cls == _FULL, qb, real, seen_full, n_full,
                                       full_q_idx_ptr + idx, 0)
        tl.store(q_num_ptr + bh * n_kv + kb, n_partial, mask=kb < n_kv)
        tl.store(full_q_num_ptr + bh * n_kv + kb, n_full, mask=kb < n_kv)

    @triton.jit
    def _smaller(a, b):
        return tl.minimum(a, b)

    @triton.jit
    def edges_chunk_kernel(ids_ptr, s0, s1, starts_ptr, ends_ptr, lows_ptr, highs_ptr, n,
                           n_chunks, CHUNK: tl.constexpr):
        """Chunk ``program_id(0)`` of row ``program_id(1)`` of non-decreasing ids: for each
        position, where its run of equal ids starts and ends (one past), as far as the
        chunk shows (-1 / n past its ends: ``edges_fix_kernel`` completes them); the
        chunk's last run start and first run end."""
        c, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
        at = c * CHUNK + tl.arange(0, CHUNK)
        live = at < n
        base = ids_ptr + row * s0
        far = at.to(tl.int64) * s1  # (int64: strided ids may lie 2³¹ entries apart)
        v = tl.load(base + far, mask=live)
        before = tl.load(base + far - s1, mask=live & (at > 0))
        after = tl.load(base + far + s1, mask=at + 1 < n)
        first = live & ((at == 0) | (v != before))
        last = live & ((at + 1 == n) | (v != after))
        start = tl.where(first, at, -1)
        end = tl.where(last, at + 1, n)
        out = row * n + at
        tl.store(starts_ptr + out, tl.associative_scan(start, 0, larger), mask=live)
        tl.store(ends_ptr + out, tl.associative_scan(end, 0, _smaller, reverse=True),
                 mask=live)
        tl.store(lows_ptr + row * n_chunks + c, tl.max(start, 0))
        tl.store(highs_ptr + row * n_chunks + c, tl.min(end, 0))

    @triton.jit
    def edges_fix_kernel(starts_ptr, ends_ptr, lows_ptr, highs_ptr, n, n_chunks,
                         CHUNK: tl.constexpr, TOPS: tl.constexpr):
        """Chunk ``program_id(0)``'s run edges completed from the other chunks': a start
        not in the chunk is the last before it, an end not in it the first after it (the
        chunks' summaries read TOPS at a time: one compiled kernel for every length)."""
        c, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
        lo = tl.full((TOPS,), -1, dtype=tl.int32)
        hi = tl.full((TOPS,), n, dtype=tl.int32)
        for k0 in range(0, n_chunks, TOPS):
            k = k0 + tl.arange(0, TOPS)
            at = row * n_chunks + k
            lo = tl.maximum(lo, tl.load(lows_ptr + at, mask=k < c, other=-1))
            hi = tl.minimum(hi, tl.load(highs_ptr + at, mask=(k > c) & (k < n_chunks),
                                        other=n))
        at = c * CHUNK + tl.arange(0, CHUNK)
        live = at < n
        out = row * n + at
        start = tl.load(starts_ptr + out, mask=live)
        end = tl.load(ends_ptr + out, mask=live)
        tl.store(starts_ptr + out, tl.maximum(start, tl.max(lo, 0)), mask=live)
        tl.store(ends_ptr + out, tl.minimum(end, tl.min(hi, 0)), mask=live)

    # Helpers of the generated build kernels (``generator``): the spec's arithmetic
    # with Python's meaning (floor division; divisors are positive, the compiler checks).

    @triton.jit
    def floordiv(a, k):
        return tl.where(a >= 0, a // k, -((k - 1 - a) // k))

    @triton.jit
    def mod(a, k):
        return a - floordiv(a, k) * k

    @triton.jit
    def clamp(i, n):
        """An index kept inside [0, n), as ``ir.evaluate`` reads inputs."""
        return tl.minimum(tl.maximum(i, 0), n - 1)
