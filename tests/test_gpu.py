"""On a CUDA device: exactness at large sizes, no recompiles as KV_LEN grows, CUDA graphs."""

import random
import threading

import pytest
import torch
from conftest import spec
from torch._dynamo.utils import counters
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec import blocks, elements, lower, scan
from maskspec.api import shipped_specs
from maskspec.cuda import decide, dispatch, plans
from maskspec.fast import Builder
from maskspec.targets import flex
from maskspec.verify import first_difference, random_inputs, structure_problems

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEV = torch.device("cuda")


@pytest.fixture(autouse=True)
def _compile_in_the_foreground(monkeypatch):
    """These tests check the kernels: no build may take the torch path while they compile
    (the last tests here check that path)."""
    monkeypatch.setattr(dispatch, "BACKGROUND_JIT", False)


def _seq_len(b: int, q: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, q + 1, (b,), generator=gen)
    lens[0] = q  # one full sample, one at the other extreme when b > 1
    if b > 1:
        lens[1] = 0
    return lens.to(DEV)


def _assert_same(ours, ref) -> None:
    assert structure_problems(ours) == []
    assert first_difference(ours, ref) is None


@pytest.mark.parametrize(
    ("name", "b", "q", "kv", "bs"),
    [("eagle3", 3, 16384, 5 * 16384, 128), ("eagle3", 1, 10000, 47123, (128, 64)),
     ("causal", 1, 16384, 16384, 128)],
)
def test_large_shapes_match_create_block_mask(name, b, q, kv, bs):
    mask = spec(name)
    inputs = {"seq_len": _seq_len(b, q, 1)} if name == "eagle3" else {}
    mm = mask.mask_mod(B=b, Q_LEN=q, KV_LEN=kv, device=DEV, **inputs)
    rb = b if mask.ir.depends_on("b") else 1
    ref = torch.compile(create_block_mask)(mm, rb, 1, q, kv, device=DEV, BLOCK_SIZE=bs)
    _assert_same(mask.block_mask(b, 1, q, kv, DEV, bs, check_inputs=False, **inputs), ref)
    _assert_same(Builder(mask, bs, cuda_graph=True)(b, 1, q, kv, DEV, **inputs), ref)


ANALYTIC = sorted(n for n in shipped_specs() if not maskspec.load(n).ir.fallback)
NEEDS_ELEMENTS = sorted(set(shipped_specs()) - set(ANALYTIC))


def _kv_len(name: str, q: int) -> int:
    """KV_LEN for a shipped spec's test at Q_LEN = q (prefix specs need more keys)."""
    if name.startswith("eagle3") or name == "dflash":
        return 3 * q + 77
    return q + 333 if name in ("tree", "jetspec_training") else q


@pytest.mark.parametrize("name", ANALYTIC)
def test_fused_kernels_match_torch_classification(name):
    """The Triton kernels on CUDA (classifying given rows, and the spec's generated build
    kernel) against the torch path, tensor for tensor, at Q=16K."""
    mask, q = spec(name), 16384
    kv = _kv_len(name, q)
    for seed, bs in ((0, (128, 128)), (1, (64, 128)), (2, (128, 48))):
        inputs = {k: t.to(DEV) for k, t in
                  random_inputs(mask, 2, 2, q, kv, random.Random(seed)).items()}
        ctx = mask._bind(2, 2, q, kv, DEV, inputs, block_size=bs)
        rows = lower.row_slots(ctx)
        assert plans.fits(plans.slots_held(rows.lo.shape[-1]), q, kv, bs)
        want = blocks.index_tensors(blocks.classify(rows, q, kv, *bs))
        got = dispatch.classify_rows(rows, q, kv, bs)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        generated = dispatch.build(ctx)
        assert all(torch.equal(a, b) for a, b in zip(generated, want, strict=True))


def _compiled_kernels(fn) -> int:
    """How many binaries a Triton JIT function holds (all devices)."""
    return sum(len(cache[0]) for cache in fn.device_caches.values())


def test_generated_kernel_compiles_once_for_a_ttt_sequence(eagle3):
    """KV_LEN growing over 7 TTT steps and new seq_len values reuse one binary of the build
    kernel (sizes and loop extents are unspecialized arguments, slots and bins bucketed)."""
    kernel, q = plans.generated(eagle3.ir).kernel, 4096
    eagle3.block_mask(2, 1, q, q, DEV, seq_len=_seq_len(2, q, 0))  # compile
    before = _compiled_kernels(kernel)
    for step in range(1, 8):
        for seed in (step, step + 100):
            kv = q * step + (step % 3) * 100
            lens = _seq_len(2, q, seed)
            ours = eagle3.block_mask(2, 1, q, kv, DEV, check_inputs=False, seq_len=lens)
            _assert_same(ours, flex.build(eagle3._bind(2, 1, q, kv, DEV, {"seq_len": lens})))
    assert _compiled_kernels(kernel) == before >= 1


def test_more_than_65535_batch_heads():
    """B'·H' indexes the grid's x dimension (CUDA caps y at 65535)."""
    mask = spec("per_head_window")
    b, h, q = 1, 70000, 128
    win = torch.randint(0, q, (h,), generator=torch.Generator().manual_seed(0)).to(DEV)
    ours = mask.block_mask(b, h, q, q, DEV, 32, check_inputs=False, window_size=win)
    mm = mask.mask_mod(B=b, H=h, Q_LEN=q, KV_LEN=q, device=DEV, window_size=win)
    ref = create_block_mask(mm, b, h, q, q, device=DEV, BLOCK_SIZE=32)
    _assert_same(ours, ref)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_kv_growth_and_new_inputs_do_not_recompile(eagle3, backend):
    fast, q = Builder(eagle3, compiled=True, backend=backend), 4096
    before = counters["stats"]["unique_graphs"]
    for step in range(1, 8):
        for seed in (step, step + 100):
            lens = _seq_len(2, q, seed)
            ours = fast(2, 1, q, q * step + (step % 3) * 100, DEV, seq_len=lens)
            ref = eagle3.block_mask(2, 1, q, q * step + (step % 3) * 100, DEV, seq_len=lens)
            _assert_same(ours, ref)
    assert counters["stats"]["unique_graphs"] - before == 1


@pytest.mark.parametrize("check", [True, False])
def test_default_call_inside_torch_compile(eagle3, check):
    """mask.block_mask inside torch.compile(fullgraph=True) on CUDA: the build op runs the
    kernels; one entry over a TTT sequence; flex_attention reads the result."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch.nn.attention.flex_attention import flex_attention

    def step(q, k, v, lens):
        bm = eagle3.block_mask(2, 1, q.shape[-2], k.shape[-2], DEV, seq_len=lens,
                               check_inputs=check)
        return flex_attention(q, k, v, block_mask=bm), bm

    torch._dynamo.reset()
    count = CompileCounterWithBackend("inductor")
    fn = torch.compile(step, backend=count, fullgraph=True, dynamic=True)
    q_len = 2048
    # From 2 rounds on: at KV_LEN = Q_LEN dynamo's duck sizing gives k and q one symbol, and
    # the next KV_LEN recompiles whatever the step computes.
    for rounds in range(2, 6):
        lens = _seq_len(2, q_len, rounds)
        q = torch.randn(2, 1, q_len, 64, device=DEV)  # fp32: kernels compiled for dynamic
        k, v = (torch.randn(2, 1, rounds * q_len, 64, device=DEV) for _ in range(2))  # and
        out, bm = fn(q, k, v, lens)  # static shapes then agree to rounding
        _assert_same(bm, eagle3.block_mask(2, 1, q_len, rounds * q_len, DEV, seq_len=lens))
        want = torch.compile(flex_attention)(q, k, v, block_mask=eagle3.block_mask(
            2, 1, q_len, rounds * q_len, DEV, seq_len=lens))
        torch.testing.assert_close(out, want)
    assert count.frame_count == 1


def _check_capture(build, eagle3, q: int, kv: int) -> None:
    """Capture build(seq_len) in a CUDA graph, change seq_len in place, replay, compare."""
    lens = _seq_len(2, q, 5)
    build(lens)  # warm up (compile) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        bm = build(lens)
    for seed in (6, 7):
        lens.copy_(_seq_len(2, q, seed))
        graph.replay()
        torch.cuda.synchronize()
        _assert_same(bm, eagle3.block_mask(2, 1, q, kv, DEV, seq_len=lens.clone()))


def test_compiled_build_inside_cuda_graph(eagle3):
    fast = Builder(eagle3, compiled=True, backend="aot_eager")
    _check_capture(lambda lens: fast(2, 1, 2048, 9000, DEV, seq_len=lens), eagle3, 2048, 9000)


def test_eager_build_inside_cuda_graph(eagle3):
    def build(lens):
        return eagle3.block_mask(2, 1, 2048, 9000, DEV, check_inputs=False, seq_len=lens)

    _check_capture(build, eagle3, 2048, 9000)


@pytest.mark.parametrize("compiled", [False, True])
def test_builder_cuda_graph_replays_with_new_inputs(eagle3, compiled):
    graphs, q = Builder(eagle3, cuda_graph=True, compiled=compiled), 2048
    for kv in (q, 3 * q, 3 * q + 5, q):
        for seed in (kv, kv + 1):
            lens = _seq_len(2, q, seed)
            _assert_same(graphs(2, 1, q, kv, DEV, seq_len=lens),
                         eagle3.block_mask(2, 1, q, kv, DEV, seq_len=lens))


@pytest.mark.parametrize("name", ["eagle3", "document_causal"])
def test_graph_replays_sanitize_values_the_checks_would_refuse(name):
    """Values copied into a captured graph are sanitized inside it (out-of-range lengths,
    decreasing document ids): every replay's mask agrees with the mask_mod it carries."""
    mask, q = maskspec.load(name), 1024
    graphs = Builder(mask, cuda_graph=True, check_inputs=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        inputs = {d.name: torch.randint(-2 * q, 2 * q, (2, 3 * q) if d.name == "doc" else (2,),
                                        generator=gen).to(DEV) for d in mask.ir.inputs}
        bm = graphs(2, 1, q, 3 * q, DEV, **inputs)
        ref = create_block_mask(bm.mask_mod, 2, 1, q, 3 * q, device=DEV)
        assert first_difference(bm, ref) is None


def test_builder_graphs_replayed_out_of_order_keep_their_masks(eagle3):
    """Each shape's graph owns its memory: replaying one never overwrites another's mask."""
    graphs, q = Builder(eagle3, cuda_graph=True), 2048
    shapes = [(q, 3 * q, 11), (q, 5 * q + 7, 12), (2 * q, 4 * q, 13)]
    held = {}
    for qq, kv, seed in shapes + shapes[::-1] + shapes[1:2]:
        lens = _seq_len(2, qq, seed)
        held[(qq, kv)] = (graphs(2, 1, qq, kv, DEV, seq_len=lens), lens)
        for (hq, hkv), (bm, hl) in held.items():  # every mask held so far is still right
            _assert_same(bm, eagle3.block_mask(2, 1, hq, hkv, DEV, seq_len=hl))


def test_builder_cuda_graph_restores_omitted_defaults(eagle3):
    """A call that omits seq_len after one that gave it sees the default, not the last value."""
    graphs, q = Builder(eagle3, cuda_graph=True), 1024
    for lens in (_seq_len(2, q, 3), None, _seq_len(2, q, 4), None):
        given = {} if lens is None else {"seq_len": lens}
        _assert_same(graphs(2, 1, q, 3 * q, DEV, **given),
                     eagle3.block_mask(2, 1, q, 3 * q, DEV, **given))
    lists = graphs(2, 1, q, 3 * q, DEV, seq_len=[5, 7])  # bound and copied on every call
    _assert_same(lists, eagle3.block_mask(2, 1, q, 3 * q, DEV, seq_len=[5, 7]))


def _fresh_spec() -> maskspec.CompiledMask:
    """A spec whose kernel no cache holds yet (its source has a constant of its own)."""
    left = random.randrange(10**6, 10**7)
    return maskspec.compile(f"mask fresh\nregion r = window(left = {left})\n", "fresh.mask")


def _held_worker(monkeypatch) -> threading.Event:
    """Hold the compiling worker until the returned event is set."""
    gate, compile_ = threading.Event(), dispatch._compile
    monkeypatch.setattr(dispatch, "BACKGROUND_JIT", True)
    monkeypatch.setattr(dispatch, "_compile", lambda *a: (gate.wait(60), compile_(*a)))
    return gate


def test_first_builds_take_the_torch_path_while_the_kernels_compile(monkeypatch, caplog):
    """A new configuration's first build does not wait for Triton: it is the torch path's,
    equal (and the "maskspec" logger says so). Once the worker has compiled the kernels,
    builds launch them."""
    caplog.set_level("INFO", logger="maskspec")
    gate = _held_worker(monkeypatch)
    mask, q = _fresh_spec(), 4096
    ref = create_block_mask(mask.mask_mod(Q_LEN=q, KV_LEN=q, device=DEV), 1, 1, q, q,
                            device=DEV)
    kernel = plans.generated(mask.ir).kernel
    _assert_same(mask.block_mask(1, 1, q, q, DEV), ref)
    assert _compiled_kernels(kernel) == 0  # the worker is still held
    gate.set()
    assert dispatch.compiled(mask._bind(1, 1, q, q, DEV, {}), wait=True)
    assert _compiled_kernels(kernel) == 1
    _assert_same(mask.block_mask(1, 1, q, q, DEV), ref)
    assert _compiled_kernels(kernel) == 1
    said = [r.getMessage() for r in caplog.records if r.name == "maskspec"]
    assert said[0] == "fresh: building on the torch path while the kernels compile"
    assert any(s.startswith("fresh: compiling the build kernels") for s in said)
    assert any(s.startswith("fresh: build kernels compiled in") for s in said)


def test_builder_captures_once_the_kernels_compiled(monkeypatch, caplog):
    """Builder(cuda_graph=True) returns uncaptured builds until the kernels are compiled,
    then captures them."""
    gate = _held_worker(monkeypatch)
    mask, q = _fresh_spec(), 2048
    ref = create_block_mask(mask.mask_mod(Q_LEN=q, KV_LEN=q, device=DEV), 1, 1, q, q,
                            device=DEV)
    graphs = Builder(mask, cuda_graph=True)
    _assert_same(graphs(1, 1, q, q, DEV), ref)
    assert not graphs._graphs
    gate.set()
    assert dispatch.compiled(mask._bind(1, 1, q, q, DEV, {}), wait=True)
    with caplog.at_level("INFO", logger="maskspec"):
        for _ in range(2):
            _assert_same(graphs(1, 1, q, q, DEV), ref)
    assert len(graphs._graphs) == 1
    assert [r.getMessage() for r in caplog.records if "captured" in r.getMessage()] == [
        f"fresh: captured the build as a CUDA graph at B=1, H=1, Q_LEN={q}, KV_LEN={q}"]


def test_capture_right_after_a_first_build_waits_for_the_kernels(monkeypatch):
    """Warm up (the torch path, while the worker is held), then capture as the worker
    compiles: the capture waits for the kernels and records them, not the torch path."""
    gate = _held_worker(monkeypatch)
    mask, q = _fresh_spec(), 2048
    ref = create_block_mask(mask.mask_mod(Q_LEN=q, KV_LEN=q, device=DEV), 1, 1, q, q,
                            device=DEV)
    _assert_same(mask.block_mask(1, 1, q, q, DEV, check_inputs=False), ref)
    torch.cuda.synchronize()
    threading.Timer(0.5, gate.set).start()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        bm = mask.block_mask(1, 1, q, q, DEV, check_inputs=False)
    graph.replay()
    torch.cuda.synchronize()
    _assert_same(bm, ref)
    assert _compiled_kernels(plans.generated(mask.ir).kernel) == 1


def _warm(build) -> None:
    """A first call (compiles, captures, allocates the check ring) and its results landed."""
    build()
    torch.cuda.synchronize()
    maskspec.wait_checks()


@pytest.mark.parametrize("graph", [False, True])
def test_checked_builds_do_not_sync(eagle3, graph):
    """The default (checked) call and a checking Builder's replay run no synchronizing
    CUDA call once warm: torch's sync debug mode turns any into an error."""
    lens, q = _seq_len(2, 4096, 5), 4096
    graphs = Builder(eagle3, cuda_graph=True) if graph else None

    def call():
        if graphs is not None:
            return graphs(2, 1, q, 5 * q, DEV, seq_len=lens)
        return eagle3.block_mask(2, 1, q, 5 * q, DEV, seq_len=lens)
    _warm(call)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            call()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    maskspec.wait_checks()


@pytest.mark.parametrize("graph", [False, True])
def test_device_checks_report_at_a_later_call(graph):
    """A bad value on CUDA: the build goes on with the sanitized values (agreeing with its
    mask_mod), and the host check's message, naming the build, raises at wait_checks or
    at the next build that finds it landed; later builds are clean again."""
    mask, q = maskspec.load("document_causal"), 1024
    graphs = Builder(mask, cuda_graph=True) if graph else None

    def call(doc):
        return graphs(1, 1, q, q, DEV, doc=doc) if graph else \
            mask.block_mask(1, 1, q, q, DEV, doc=doc)
    good = (torch.arange(q, device=DEV) // 100).view(1, q)
    _warm(lambda: call(good))
    bad = good.clone()
    bad[0, 500] = 0
    bm = call(bad)
    ref = create_block_mask(bm.mask_mod, 1, 1, q, q, device=DEV)
    assert first_difference(bm, ref) is None
    with pytest.raises(ValueError, match=r"doc\[0, 500\] = 0 follows a larger id.*earlier "
                       r"build of `document_causal`"):
        maskspec.wait_checks()
    maskspec.wait_checks()  # reported once
    call(bad)
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match="non-decreasing"):
        call(good)
    _assert_same(call(good), mask.block_mask(1, 1, q, q, DEV, check_inputs=False, doc=good))
    maskspec.wait_checks()


def test_plan_launches_follow_input_alignment_and_strides():
    """A configuration's cached launches (plans.Plan) are keyed by what Triton specializes
    on: inputs at odd offsets and with odd strides build what the torch path builds."""
    mask, q = spec("document_causal"), 4096
    wide = (torch.arange(3 * q + 1, device=DEV) // 300).view(1, -1)
    views = [wide[:, :q], wide[:, 1:q + 1], wide[:, : 2 * q : 2], wide[:, 3::3][:, :q]]
    for doc in views + views:
        ctx = mask._bind(1, 1, q, q, DEV, {"doc": doc}, check=False)
        got, want = dispatch.tensors(ctx), dispatch.torch_path(ctx)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_cleaned_on_cuda_is_clamp_then_cummax():
    """Inputs are sanitized on CUDA by Triton kernels (a clamp, and for document ids a
    two-pass scan; torch's cummax scans a row in one thread block): equal to clamp then
    cummax for either dtype, one chunk or many, rows whose chunk maxima take several
    reads, with or without a running max; the flag set exactly where a value changed."""
    g = torch.Generator(device=DEV).manual_seed(0)
    for n in (1, 1025, 2048, 32768, 131072 + 77, scan.CHUNK * scan.TOPS * 2 + 5):
        for dtype in (torch.int32, torch.int64):
            for running in (False, True):
                t = torch.randint(-1000, 1000, (3, n), device=DEV, generator=g, dtype=dtype)
                for x in (t, t.cummax(-1).values.clamp(-900, 900)):
                    flag = torch.zeros((), dtype=torch.int32, device=DEV)
                    got = scan.cleaned(x, -900, 900, running, flag)
                    want = x.clamp(-900, 900)
                    want = want.cummax(-1).values if running else want
                    assert torch.equal(got, want), (n, dtype, running)
                    assert int(flag) == int(not torch.equal(want, x)), (n, dtype, running)


FALLBACK = ("mask m\ninput g: bool[B, KV_LEN]\ninput kimg: int[B, KV_LEN] in [0, 3]\n"
            "input qimg: int[B, Q_LEN] in [0, 3]\n"
            "region r = window(left = 300, right = 40) where g[b, kv] and (q ^ kv) & 5 != 1\n"
            "region s = causal where kimg[b, kv] == qimg[b, q]\n")


@pytest.mark.parametrize(("q", "kv", "bs"), [(1000, 3000, 128), (4096, 4096, (128, 64)),
                                             (333, 777, 64)])
def test_element_fallback_on_the_device_equals_create_block_mask(q, kv, bs):
    """A mask with conditions the row programs leave out builds on CUDA (the torch path and
    the element fallback) exactly as create_block_mask over its mask_mod."""
    mask = maskspec.compile(FALLBACK)
    gen = torch.Generator().manual_seed(q)
    x = {"g": (torch.rand(2, kv, generator=gen) < 0.3).to(DEV),
         "kimg": torch.randint(0, 4, (2, kv), generator=gen).to(DEV),
         "qimg": torch.randint(0, 4, (2, q), generator=gen).to(DEV)}
    ours = mask.block_mask(2, 1, q, kv, DEV, bs, **x)
    ref = create_block_mask(mask.mask_mod(B=2, H=1, Q_LEN=q, KV_LEN=kv, **x), 2, 1, q, kv,
                            device=DEV, BLOCK_SIZE=bs)
    assert first_difference(ours, ref) is None
    assert not structure_problems(ours)
    cpu = mask.block_mask(2, 1, q, kv, "cpu", bs, **{k: v.cpu() for k, v in x.items()})
    assert first_difference(ours.to("cpu"), cpu) is None


@pytest.mark.parametrize("dense", [True, False], ids=["every block", "by parts"])
@pytest.mark.parametrize("name", NEEDS_ELEMENTS)
def test_shipped_fallback_specs_on_the_device_equal_create_block_mask(name, dense,
                                                                      monkeypatch):
    """The shipped specs with conditions no row program holds (key sets, lookups, bit and
    digit layouts) build on CUDA exactly as create_block_mask over their mask_mod: every
    block decided by the generated kernel, or (past ``DENSE_PAIRS``) classified by parts
    with the undecided blocks by the kernel; the torch loop must not run."""
    monkeypatch.setattr(elements, "decide", lambda *a: pytest.fail("torch loop on CUDA"))
    if not dense:
        monkeypatch.setattr(decide, "DENSE_PAIRS", 0)
    mask, q = spec(name), 4096
    kv = _kv_len(name, q)
    x = {k: t.to(DEV) for k, t in random_inputs(mask, 2, 2, q, kv, random.Random(0)).items()}
    ours = mask.block_mask(2, 2, q, kv, DEV, (128, 64), **x)
    mm = mask.mask_mod(B=2, H=2, Q_LEN=q, KV_LEN=kv, **x)
    ref = create_block_mask(mm, 2, 2, q, kv, device=DEV, BLOCK_SIZE=(128, 64))
    _assert_same(ours, ref)


SEPARABLE = (
    "mask m\ninput img: int[B, KV_LEN] in [0, 7]\ninput sel: bool[B, H, KV_LEN // 64, "
    "KV_LEN // 64]\ninput anc: bool[B, Q_LEN, Q_LEN]\n"
    "region images = window(left = 700, right = 90) where img[b, kv] == img[b, q]\n"
    "region tiles = causal where sel[b, h, q // 64, kv // 64] and img[b, kv] != 3\n"
    "region tree = full where kv >= KV_LEN - Q_LEN and anc[b, q, max(kv - KV_LEN + Q_LEN, 0)]\n"
    "region digits = full where (kv // 7) % 5 + kv % 7 <= (q // 3) % 4 + q % 3\n")


@pytest.mark.parametrize(("q", "bs"), [(2048, 128), (1536, (128, 64)), (1000, 64)])
def test_conditions_read_one_side_at_a_time_on_the_device(q, bs, monkeypatch):
    """Ids in any order, a tile map, an ancestor table and ordered digit sums, classified by
    parts on CUDA (past ``DENSE_PAIRS``): equal to create_block_mask and to the CPU build."""
    monkeypatch.setattr(decide, "DENSE_PAIRS", 0)
    mask, kv = maskspec.compile(SEPARABLE), 2 * 2048
    assert all(t.separable for t in mask.ir.terms)
    gen = torch.Generator().manual_seed(q)
    img = torch.randperm(8, generator=gen)[torch.arange(kv) * 8 // kv].repeat(2, 1)
    x = {"img": img, "sel": torch.rand(2, 2, kv // 64, kv // 64, generator=gen) < 0.3,
         "anc": torch.rand(2, q, q, generator=gen) < 0.5}
    x = {k: v.to(DEV) for k, v in x.items()}
    ours = mask.block_mask(2, 2, q, kv, DEV, bs, **x)
    ref = create_block_mask(mask.mask_mod(B=2, H=2, Q_LEN=q, KV_LEN=kv, **x), 2, 2, q, kv,
                            device=DEV, BLOCK_SIZE=bs)
    _assert_same(ours, ref)
    cpu = mask.block_mask(2, 2, q, kv, "cpu", bs, **{k: v.cpu() for k, v in x.items()})
    assert first_difference(ours.to("cpu"), cpu) is None
