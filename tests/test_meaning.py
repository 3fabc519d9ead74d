"""Each shipped spec means what its header says: dense evaluation against a hand-written
mask_mod (attention-gym style) for that model's mask, on random shapes and inputs."""

import random

import pytest
import torch
from conftest import PARAMS, spec
from torch.nn.attention.flex_attention import create_mask

from maskspec.verify import random_inputs


def eagle3(i, Q, KV):
    """TorchSpec's generate_eagle3_mask with its per-sample padding restored."""
    lens = i["seq_len"]

    def mm(b, h, q, kv):
        causal = (q >= kv) & (kv < lens[b]) & (q < lens[b])
        suffix = (kv >= Q) & (kv % Q < lens[b]) & ((kv - q) % Q == 0)
        return causal | suffix
    return mm


def eagle3_packed(i, Q, KV):
    doc = i["doc"]

    def mm(b, h, q, kv):
        same = doc[b, q] == doc[b, torch.clamp(kv, max=Q - 1)]
        return ((q >= kv) & same & (kv < Q)) | ((kv >= Q) & ((kv - q) % Q == 0))
    return mm


def causal(i, Q, KV):
    return lambda b, h, q, kv: q >= kv


def causal_bottom_right(i, Q, KV):
    return lambda b, h, q, kv: q + (KV - Q) >= kv


def sliding_window(i, Q, KV, width=37):
    return lambda b, h, q, kv: (q >= kv) & (q - kv <= width)


def sliding_window_with_sinks(i, Q, KV, width=45, sinks=5):
    return lambda b, h, q, kv: (q >= kv) & ((q - kv <= width) | (kv < sinks))


def prefix_lm(i, Q, KV):
    return lambda b, h, q, kv: (kv < i["prefix_len"][b]) | (q >= kv)


def chunked_causal(i, Q, KV, size=48):
    return lambda b, h, q, kv: (q >= kv) & (q // size == kv // size)


def _same_doc(doc, n):
    return lambda b, q, kv: (kv < n) & (doc[b, q] == doc[b, torch.clamp(kv, max=n - 1)])


def document_causal(i, Q, KV):
    same = _same_doc(i["doc"], i["doc"].shape[-1])
    return lambda b, h, q, kv: (q >= kv) & same(b, q, kv)


def document_bidirectional(i, Q, KV):
    same = _same_doc(i["doc"], i["doc"].shape[-1])
    return lambda b, h, q, kv: same(b, q, kv)


def per_head_window(i, Q, KV):
    w = i["window_size"]
    return lambda b, h, q, kv: (q >= kv) & (q - kv <= w[h])


def dflash(i, Q, KV, block=8):
    ctx = KV - Q
    anchor, keep = i["anchor"], i["keep"]

    def mm(b, h, q, kv):
        g = q // block
        context = (kv < ctx) & (kv < anchor[b, g])
        own_block = (kv >= ctx) & ((kv - ctx) // block == g)
        return (context | own_block) & keep[b, g]
    return mm


REFERENCES = {f.__name__: f for f in (
    eagle3, eagle3_packed, causal, causal_bottom_right, sliding_window,
    sliding_window_with_sinks, prefix_lm, chunked_causal, document_causal,
    document_bidirectional, per_head_window, dflash,
)}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_spec_means_what_its_header_says(name):
    mask = spec(name, **PARAMS.get(name, {}))
    rng = random.Random(name)
    for _ in range(12):
        q = rng.randint(1, 160)
        kv = rng.choice([q, 3 * q, rng.randint(q, 500)])
        b, h = rng.randint(1, 2), rng.randint(1, 3)
        inputs = random_inputs(mask, b, h, q, kv, rng)
        want = create_mask(REFERENCES[name](inputs, q, kv), b, h, q, kv, device="cpu")
        got = mask.dense(b, h, q, kv, **inputs)
        assert torch.equal(got, want), (name, b, h, q, kv, inputs)
