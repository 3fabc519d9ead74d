"""flex_attention with maskspec's BlockMask equals SDPA with the dense mask.

On CPU, eager flex_attention ignores the block mask (it evaluates mask_mod densely) and has
no backward; compiled flex_attention does use the blocks, so the CPU test compiles it and
checks that a corrupted BlockMask changes the output. Backward runs where CUDA is present.
"""

import pytest
import torch
from conftest import spec
from torch.nn.attention.flex_attention import flex_attention


def _reference(q, k, v, dense):
    """SDPA with the dense mask; fully masked rows give zero output, as flex_attention does."""
    seen = dense.any(-1, keepdim=True)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense | ~seen)
    return out * seen


CASES = [
    ("eagle3", 200, 700, (64, 32), {"seq_len": torch.tensor([200, 130])}),
    ("eagle3", 256, 768, 128, {}),
    ("causal", 300, 300, 64, {}),
    ("document_causal", 256, 256, 32, {"doc": torch.tensor([[0] * 100 + [1] * 156] * 2)}),
    ("prefix_lm", 256, 256, 64, {"prefix_len": torch.tensor([70, 0])}),
]


def _qkv(q_len, kv_len, device, dtype, grad=False):
    torch.manual_seed(0)
    return [torch.randn(2, 2, n, 16, device=device, dtype=dtype, requires_grad=grad)
            for n in (q_len, kv_len, kv_len)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "q_len", "kv_len", "bs", "inputs"), CASES)
def test_flex_attention_forward_cpu(name, q_len, kv_len, bs, inputs):
    mask = spec(name)
    bm = mask.block_mask(2, 2, q_len, kv_len, "cpu", bs, **inputs)
    q, k, v = _qkv(q_len, kv_len, "cpu", torch.float32)
    flex = torch.compile(flex_attention)
    out = flex(q, k, v, block_mask=bm)
    ref = _reference(q, k, v, mask.dense(2, 2, q_len, kv_len, **inputs))
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)
    bm.kv_num_blocks.zero_()  # negative control: the kernel must be reading our blocks
    assert not torch.allclose(flex(q, k, v, block_mask=bm), ref, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention backward needs CUDA")
@pytest.mark.parametrize(("name", "q_len", "kv_len", "bs", "inputs"), CASES)
def test_flex_attention_forward_and_backward_cuda(name, q_len, kv_len, bs, inputs):
    mask = spec(name)
    inputs = {k: t.cuda() for k, t in inputs.items()}
    bs = 128  # the GPU kernels tile 128-wide blocks; the CPU test covers the other sizes
    bm = mask.block_mask(2, 2, q_len, kv_len, "cuda", bs, **inputs)
    q, k, v = _qkv(q_len, kv_len, "cuda", torch.float32, grad=True)
    out = torch.compile(flex_attention)(q, k, v, block_mask=bm)
    ref = _reference(q, k, v, mask.dense(2, 2, q_len, kv_len, "cuda", **inputs))
    torch.testing.assert_close(out, ref, rtol=2e-4, atol=2e-4)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=2e-3, atol=2e-3)
