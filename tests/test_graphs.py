"""The plain call's CUDA graphs (``maskspec.cuda.graphs``): a configuration built a second
time is captured and later calls replay it, each returning tensors and a mask_mod of its own.

On the CPU a stand-in graph replays the same build into the same buffers in place (what a
real graph does), so the policy (when to capture, what a replay copies in and out, the
budget, the value checks of replayed calls) is tested here as on the device; the GPU tests
at the end run the real thing.
"""

import pytest
import torch
from conftest import spec
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec import inputs as inputs_stage
from maskspec.cuda import dispatch, graphs
from maskspec.fast import Builder
from maskspec.verify import first_difference

CPU = torch.device("cpu")


class _Replayed:
    """A stand-in CUDA graph: ``replay`` runs the captured build again from the static
    inputs and writes every result into the tensors captured the first time."""

    def __init__(self, build, held) -> None:
        self.build, self.held, self.replays = build, held, 0

    def replay(self) -> None:
        self.replays += 1
        for dst, src in zip(self.held, self.build(), strict=True):
            if dst is not None and dst is not src:
                dst.copy_(src)


def _stand_in_capture(ctx, raw, check, run=dispatch.tensors, packed=False):
    static = {k: t.clone() for k, t in ctx.inputs.items()}

    def build():
        clean, bad = (inputs_stage.flagged(ctx.mask, ctx.sizes, static, check) if raw
                      else (static, None))
        out = run(ctx.with_inputs(clean))
        flat = graphs.packed_copy(out) if packed else None
        return (*clean.values(), bad, *out, flat)

    first = build()
    n = len(static)
    clean = dict(zip(static, first[:n], strict=True))
    graph = _Replayed(build, first)
    return graphs.Captured(graph, ctx.with_inputs(dict(clean)), static, clean,
                           tuple(first[n + 1:-1]), first[-1], first[n], raw)


@pytest.fixture
def stand_in(monkeypatch):
    """The plain call's graphs on the CPU, captured by ``_stand_in_capture``."""
    monkeypatch.setattr(graphs, "PLAIN", graphs.Replays())
    monkeypatch.setattr(graphs, "eligible", lambda device: graphs.BUDGET > 0)
    monkeypatch.setattr(graphs, "_capturable", lambda ctx: not ctx.mask.fallback)
    monkeypatch.setattr(graphs, "capture", _stand_in_capture)
    return graphs.PLAIN


def _lens(seed: int, b: int, q: int) -> torch.Tensor:
    return torch.randint(0, q + 1, (b,), generator=torch.Generator().manual_seed(seed))


def _eager(mask, *args, **inputs):
    """The same build without graphs."""
    with graphs.off():
        return mask.block_mask(*args, **inputs)


def _replays(plain: graphs.Replays) -> int:
    return sum(c.graph.replays for c in plain.graphs.values())


def test_second_build_captures_and_later_ones_replay(stand_in, eagle3):
    q, kv = 512, 1536
    held = []
    for seed in range(6):
        lens = _lens(seed, 2, q)
        bm = eagle3.block_mask(2, 1, q, kv, CPU, seq_len=lens)
        assert len(stand_in.graphs) == (seed > 0)
        held.append((bm, lens))
    assert _replays(stand_in) == 5  # the capturing call replays too
    for bm, lens in held:  # each result kept its own tensors and inputs
        assert first_difference(bm, _eager(eagle3, 2, 1, q, kv, CPU, seq_len=lens)) is None
        ref = create_block_mask(bm.mask_mod, 2, 1, q, kv, device=CPU)
        assert first_difference(bm, ref) is None


def test_defaults_and_other_shapes_have_graphs_of_their_own(stand_in, eagle3):
    calls = [((1, 1, 256, 768), {}), ((2, 1, 256, 768), {"seq_len": _lens(1, 2, 256)}),
             ((1, 1, 256, 1024), {}), ((2, 1, 256, 768), {"seq_len": [3, 200]})]
    for _ in range(3):
        for args, given in calls:
            want = _eager(eagle3, *args, CPU, **given)
            assert first_difference(eagle3.block_mask(*args, CPU, **given), want) is None
    assert len(stand_in.graphs) == len(calls)


def test_masks_never_share_a_graph(stand_in):
    a, b = spec("causal"), spec("sliding_window")
    for _ in range(3):
        for m in (a, b):
            assert first_difference(m.block_mask(1, 1, 512, 512, CPU),
                                    _eager(m, 1, 1, 512, 512, CPU)) is None
    assert {c.ctx.mask.name for c in stand_in.graphs.values()} == {"causal", "sliding_window"}


def test_replayed_values_are_checked(stand_in, eagle3):
    """A replay copies given tensors in unbound: the graph's flag reports a bad value at the
    next build (off CUDA the flag lands at once), naming the input."""
    good, bad = torch.tensor([10, 512]), torch.tensor([10, 513])
    for _ in range(2):
        eagle3.block_mask(2, 1, 512, 1024, CPU, seq_len=good)
    eagle3.block_mask(2, 1, 512, 1024, CPU, seq_len=bad)  # replayed: flagged on the device
    with pytest.raises(ValueError, match="seq_len"):
        maskspec.wait_checks()


def test_deferred_checks_report_at_a_later_call(stand_in, monkeypatch):
    """With the checks run as on CUDA (read back later), a bad value at the call that
    captures, and at a replay, is reported at a later call or wait_checks, never at its own
    call, and each build agrees with its mask_mod."""
    monkeypatch.setattr(inputs_stage, "DEFERRED_DEVICES", {"cuda", "cpu"})
    mask, q = spec("document_causal"), 1024
    good = (torch.arange(q) // 100).view(1, q)
    bad = good.clone()
    bad[0, 500] = 0
    mask.block_mask(1, 1, q, q, CPU, doc=good)
    for _ in range(2):  # captured, then replayed
        bm = mask.block_mask(1, 1, q, q, CPU, doc=bad)
        ref = create_block_mask(bm.mask_mod, 1, 1, q, q, device=CPU)
        assert first_difference(bm, ref) is None
        with pytest.raises(ValueError, match=r"doc\[0, 500\] = 0 follows a larger id"):
            maskspec.wait_checks()
    assert len(stand_in.graphs) == 1
    mask.block_mask(1, 1, q, q, CPU, doc=bad)
    with pytest.raises(ValueError, match="non-decreasing"):
        mask.block_mask(1, 1, q, q, CPU, doc=good)
    bm = mask.block_mask(1, 1, q, q, CPU, doc=good)
    assert first_difference(bm, _eager(mask, 1, 1, q, q, CPU, doc=good)) is None
    maskspec.wait_checks()


def test_lookups_through_inputs_are_checked_at_every_replay(stand_in):
    """Checking a lookup whose index reads another input reads the values on the host: such
    calls bind (and check) every time, replayed or not."""
    mask = maskspec.compile("mask m\ninput which: int[B]\ninput lens: int[4]\n"
                            "region r = causal\nvalid q < lens[which[b]]\n")
    lens = torch.tensor([2, 3, 4, 5])
    for _ in range(3):
        bm = mask.block_mask(2, 1, 8, 8, CPU, 4, which=torch.tensor([1, 3]), lens=lens)
    assert stand_in.graphs and not any(c.raw for c in stand_in.graphs.values())
    assert first_difference(bm, _eager(mask, 2, 1, 8, 8, CPU, 4, which=torch.tensor([1, 3]),
                                       lens=lens)) is None
    with pytest.raises(maskspec.MaskSpecError, match=r"index 0 of `lens` ranges over"):
        mask.block_mask(2, 1, 8, 8, CPU, 4, which=torch.tensor([1, 9]), lens=lens)


def test_sizes_a_binding_refuses_are_refused_on_replays(stand_in, eagle3):
    for _ in range(3):
        eagle3.block_mask(2, 1, 256, 768, CPU)
    for bad in ((2.0, 1, 256, 768), (2, 1, 256.0, 768), (True, 1, 256, 768)):
        with pytest.raises(ValueError, match="must be a positive int"):
            eagle3.block_mask(*bad, CPU)


def test_builder_checks_report_at_a_later_call(stand_in, monkeypatch):
    """``fast.Builder(cuda_graph=True)`` through the same graphs (the stand-in on the CPU),
    checks deferred as on CUDA: a bad value at its capturing call and at a replay is
    reported later, and every mask agrees with its mask_mod."""
    monkeypatch.setattr(inputs_stage, "DEFERRED_DEVICES", {"cuda", "cpu"})
    mask, q = spec("document_causal"), 1024
    build = Builder(mask, cuda_graph=True)
    good = (torch.arange(q) // 100).view(1, q)
    bad = good.clone()
    bad[0, 500] = 0
    for _ in range(2):  # captured at the first call, then replayed
        bm = build(1, 1, q, q, CPU, doc=bad)
        ref = create_block_mask(bm.mask_mod, 1, 1, q, q, device=CPU)
        assert first_difference(bm, ref) is None
        with pytest.raises(ValueError, match=r"doc\[0, 500\] = 0 follows a larger id"):
            maskspec.wait_checks()
    assert len(build._graphs) == 1
    bm = build(1, 1, q, q, CPU, doc=good)
    assert first_difference(bm, _eager(mask, 1, 1, q, q, CPU, doc=good)) is None
    maskspec.wait_checks()


def test_unchecked_replays_sanitize(stand_in, eagle3):
    for _ in range(3):
        bm = eagle3.block_mask(2, 1, 512, 1024, CPU, check_inputs=False,
                               seq_len=torch.tensor([-7, 900]))
        ref = create_block_mask(bm.mask_mod, 2, 1, 512, 1024, device=CPU)
        assert first_difference(bm, ref) is None


def test_budget_keeps_recent_graphs(stand_in, monkeypatch, eagle3):
    kvs = (768, 700, 650, 720)  # 2 × 6 blocks each: graphs of one size
    for kv in kvs[:3] * 2:
        eagle3.block_mask(1, 1, 256, kv, CPU)
    one = {graphs._held(c) for c in stand_in.graphs.values()}.pop()
    assert len(stand_in.graphs) == 3 and stand_in.held == 3 * one
    monkeypatch.setattr(graphs, "BUDGET", 2 * one)
    eagle3.block_mask(1, 1, 256, kvs[0], CPU)  # replayed: now the most recent
    for _ in range(2):  # a fourth graph: the two least recent go
        bm = eagle3.block_mask(1, 1, 256, kvs[3], CPU)
    assert [k[4] for k in stand_in.graphs] == [768, 720] and stand_in.held == 2 * one
    assert first_difference(bm, _eager(eagle3, 1, 1, 256, kvs[3], CPU)) is None


def test_a_graph_over_the_budget_is_never_kept(stand_in, monkeypatch, eagle3):
    monkeypatch.setattr(graphs, "BUDGET", 1)
    for _ in range(3):
        bm = eagle3.block_mask(1, 1, 256, 512, CPU)
    assert not stand_in.graphs and stand_in.seen
    assert first_difference(bm, _eager(eagle3, 1, 1, 256, 512, CPU)) is None


def _fields(sparse) -> list:
    return [getattr(sparse, f) for f in ("mask_block_cnt", "mask_block_idx", "full_block_cnt",
                                         "full_block_idx")]


@pytest.mark.parametrize(("name", "b"), [("eagle3", 2), ("causal", 3)])
def test_fa4_replays_see_the_outputs_at_its_leading_shape(stand_in, name, b):
    """FA4's tensors from a replay are views at (B, H) straight from the copy: equal, shape
    and strides included, to the expanded tensors of a build without graphs."""
    mask = spec(name)
    given = {"seq_len": _lens(5, b, 256)} if name == "eagle3" else {}
    args = (b, 4, 256, 768, CPU, (128, 128))
    for _ in range(3):
        fwd_bwd = mask.fa4_block_sparse(*args, arch=90, **given)
    with graphs.off():
        want = mask.fa4_block_sparse(*args, arch=90, **given)
    assert stand_in.graphs
    for ours, ref in zip(fwd_bwd, want, strict=True):
        for x, y in zip(_fields(ours), _fields(ref), strict=True):
            assert x.shape == y.shape and x.stride() == y.stride() and torch.equal(x, y)


def test_call_key_tells_calls_apart(eagle3):
    t = torch.zeros(2, dtype=torch.long)
    key = graphs.call_key
    base = key(eagle3.ir, 2, 1, 64, 64, CPU, (128, 128), True, {"seq_len": t})
    assert base == key(eagle3.ir, 2, 1, 64, 64, CPU, (128, 128), True, {"seq_len": t + 1})
    others = [key(eagle3.ir, 2, 1, 64, 65, CPU, (128, 128), True, {"seq_len": t}),
              key(eagle3.ir, 2, 1, 64, 64, CPU, (128, 64), True, {"seq_len": t}),
              key(eagle3.ir, 2, 1, 64, 64, CPU, (128, 128), False, {"seq_len": t}),
              key(eagle3.ir, 2, 1, 64, 64, CPU, (128, 128), True, {"seq_len": t.int()}),
              key(eagle3.ir, 2, 1, 64, 64, CPU, (128, 128), True, {}),
              key(eagle3.ir, 2, 1, 64, 64, CPU, (128, 128), True, {"seq_len": [0, 0]}),
              key(spec("causal").ir, 2, 1, 64, 64, CPU, (128, 128), True, {"seq_len": t})]
    assert len({base, *others}) == 1 + len(others)


# ---------------------------------------------------------------- on the device

DEV = torch.device("cuda")
on_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def on_device(monkeypatch):
    monkeypatch.setattr(dispatch, "BACKGROUND_JIT", False)
    monkeypatch.setattr(graphs, "PLAIN", graphs.Replays())
    return graphs.PLAIN


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("name", ["eagle3", "document_causal", "sliding_window"])
@pytest.mark.parametrize("check", [True, False])
def test_device_replays_equal_create_block_mask(on_device, name, check):
    mask, q = spec(name), 2048
    gen = torch.Generator().manual_seed(3)
    held = []
    for step in range(5):
        given = {}
        if name == "eagle3":
            given = {"seq_len": torch.randint(0, q + 1, (2,), generator=gen).to(DEV)}
        elif name == "document_causal":
            starts = torch.rand(2, 3 * q, generator=gen) < 0.01
            given = {"doc": starts.cumsum(-1).to(DEV)}
        held.append((mask.block_mask(2, 1, q, 3 * q, DEV, check_inputs=check, **given),
                     {k: t.clone() for k, t in given.items()}))
        assert len(on_device.graphs) == (step > 0)
    maskspec.wait_checks()
    for bm, given in held:  # each replay's tensors and mask_mod are its own
        b = 2 if mask.ir.depends_on("b") else 1
        ref = create_block_mask(bm.mask_mod, b, 1, q, 3 * q, device=DEV)
        assert first_difference(bm, ref) is None
        want = _eager(mask, 2, 1, q, 3 * q, DEV, check_inputs=check, **given)
        assert first_difference(bm, want) is None


@pytest.mark.gpu
@on_gpu
def test_device_replay_reports_a_bad_value(on_device, eagle3):
    good = torch.tensor([10, 2048], device=DEV)
    for _ in range(2):
        eagle3.block_mask(2, 1, 2048, 4096, DEV, seq_len=good)
    assert on_device.graphs
    eagle3.block_mask(2, 1, 2048, 4096, DEV, seq_len=good + 1)
    with pytest.raises(ValueError, match="seq_len"):
        maskspec.wait_checks()


@pytest.mark.gpu
@on_gpu
def test_no_graph_inside_the_callers_capture(on_device, eagle3):
    lens = torch.tensor([100, 2048], device=DEV)
    for _ in range(2):
        eagle3.block_mask(2, 1, 2048, 4096, DEV, check_inputs=False, seq_len=lens)
    on_device.clear()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        bm = eagle3.block_mask(2, 1, 2048, 4096, DEV, check_inputs=False, seq_len=lens)
    assert not on_device.graphs and not on_device.seen
    lens.copy_(torch.tensor([2048, 7], device=DEV))
    graph.replay()
    ref = create_block_mask(bm.mask_mod, 2, 1, 2048, 4096, device=DEV)
    assert first_difference(bm, ref) is None


@pytest.mark.gpu
@on_gpu
def test_each_stream_has_graphs_of_its_own(on_device, eagle3):
    side = torch.cuda.Stream()
    lens = torch.tensor([100, 2048], device=DEV)
    for _ in range(3):
        eagle3.block_mask(2, 1, 2048, 4096, DEV, seq_len=lens)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            bm = eagle3.block_mask(2, 1, 2048, 4096, DEV, seq_len=lens)
        torch.cuda.current_stream().wait_stream(side)
    assert len(on_device.graphs) == 2
    ref = create_block_mask(bm.mask_mod, 2, 1, 2048, 4096, device=DEV)
    assert first_difference(bm, ref) is None


@pytest.mark.gpu
@on_gpu
def test_a_capture_under_inference_mode_serves_calls_outside_it(on_device, eagle3):
    lens = torch.tensor([100, 2048], device=DEV)
    with torch.inference_mode():
        for _ in range(2):
            eagle3.block_mask(2, 1, 2048, 4096, DEV, seq_len=lens)
    assert on_device.graphs
    bm = eagle3.block_mask(2, 1, 2048, 4096, DEV, seq_len=lens - 1)
    ref = create_block_mask(bm.mask_mod, 2, 1, 2048, 4096, device=DEV)
    assert first_difference(bm, ref) is None
