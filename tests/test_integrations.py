"""Drop-in adapters, against the trainers' own definitions (written here in our words, so
the tests run where the trainer is not installed)."""

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from maskspec.integrations import torchspec
from maskspec.verify import first_difference


def torchspec_padded_mask_mod(seq_lengths: torch.Tensor, q_len: int):
    """TorchSpec's padded EAGLE-3 mask: row q of sample b sees its causal context while q and
    kv are below the sample's length, and in each later round of Q_LEN keys the key in q's
    own slot, while that slot is below the length. Lengths may be float or negative."""
    def mask_mod(b, h, q, kv):
        n = seq_lengths[b]
        context = (q >= kv) & (kv < n) & (q < n)
        rounds = (kv >= q_len) & (kv % q_len < n) & ((kv - q) % q_len == 0)
        return context | rounds
    return mask_mod


def torchspec_mask_mod(q_len: int):
    """TorchSpec's unpadded EAGLE-3 mask (its analytic builder's)."""
    def mask_mod(b, h, q, kv):
        return ((kv < q_len) & (q >= kv)) | ((kv >= q_len) & ((kv - q) % q_len == 0))
    return mask_mod


LENGTHS = [
    torch.tensor([300.0, 17.5, -5.0]),   # float, fractional, negative (a short sample)
    torch.tensor([0, 1000, 128]),         # integer, empty, past Q_LEN
]


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("bs", [128, (256, 128), 64, (32, 16)])
def test_padded_masks_equal_torchspecs_over_a_ttt_loop(lengths, bs):
    q_len = 300
    for rounds in range(1, 5):
        kv = rounds * q_len
        ours = torchspec.eagle3_block_mask(q_len, kv, B=3, device="cpu", BLOCK_SIZE=bs,
                                           seq_lengths=lengths, lck=rounds - 1)
        ref = create_block_mask(torchspec_padded_mask_mod(lengths, q_len), 3, 1, q_len, kv,
                                device="cpu", BLOCK_SIZE=bs)
        assert first_difference(ours, ref) is None, (rounds, bs)


@pytest.mark.slow  # importing SpecForge's draft models takes ~10 s
@pytest.mark.parametrize("bs", [128, (128, 64), 48])
def test_masks_equal_specforges_own_over_a_ttt_loop(bs):
    """SpecForge (``pip install --no-deps specforge``: its pins, torch 2.11 and sglang, are
    not needed by its mask code) builds EAGLE-3's mask in its Llama draft layer from
    ``attention_mask.sum(-1) - lck`` with ``generate_eagle3_mask`` and create_block_mask;
    the TorchSpec adapter, given the same lengths, builds the same blocks every TTT step,
    padding (and lengths gone negative) included."""
    flex = pytest.importorskip("specforge.modeling.draft.flex_attention")
    q_len, b = 300, 4
    attention_mask = torch.zeros(b, q_len, dtype=torch.long)
    for i, n in enumerate([300, 120, 2, 0]):  # full, padded, shorter than the rounds, empty
        attention_mask[i, :n] = 1
    for lck in range(4):
        kv = (lck + 1) * q_len
        seq_lengths = attention_mask.sum(dim=-1) - lck  # as their layer computes it
        ref = create_block_mask(flex.generate_eagle3_mask(seq_lengths, q_len, kv, lck), b, 1,
                                q_len, kv, device="cpu", BLOCK_SIZE=bs)
        ours = torchspec.eagle3_block_mask(q_len, kv, B=b, device="cpu", BLOCK_SIZE=bs,
                                           seq_lengths=seq_lengths, lck=lck)
        assert first_difference(ours, ref) is None, (lck, bs)


@pytest.mark.parametrize(("q_len", "bs"), [(512, 128), (512, (256, 128)), (200, 64)])
def test_unpadded_masks_equal_torchspecs(q_len, bs):
    for rounds in range(1, 4):
        ours = torchspec.eagle3_block_mask(q_len, rounds * q_len, device="cpu", BLOCK_SIZE=bs)
        ref = create_block_mask(torchspec_mask_mod(q_len), 1, 1, q_len, rounds * q_len,
                                device="cpu", BLOCK_SIZE=bs)
        assert first_difference(ours, ref) is None


def test_lengths_round_up_and_clamp():
    got = torchspec.valid_lengths(torch.tensor([2.5, -1.0, 7.0, 99.0]), 10)
    assert got.tolist() == [3, 0, 7, 10] and got.dtype == torch.int64


def _tiny_llama(transformers, impl: str):
    """A randomly initialised two-layer Llama (no download), the same weights every call."""
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.config._attn_implementation = impl
    return model


@pytest.mark.slow
def test_transformers_flex_path_with_packed_documents_equals_its_own_mask_path():
    transformers = pytest.importorskip("transformers")
    from maskspec.integrations import hf

    gen = torch.Generator().manual_seed(0)
    rows = [[40, 1, 57, 30], [3, 125]]  # two packed rows of 128 tokens; a one-token document
    pos = torch.stack([torch.cat([torch.arange(n) for n in r]) for r in rows])
    ids = torch.randint(0, 101, pos.shape, generator=gen)
    own, flex = _tiny_llama(transformers, "sdpa"), _tiny_llama(transformers, "flex_attention")
    with torch.no_grad():
        want = own(input_ids=ids, position_ids=pos, use_cache=False).logits
        bm = hf.packed_block_mask(pos, BLOCK_SIZE=32)
        got = flex(input_ids=ids, position_ids=pos, attention_mask=bm, use_cache=False).logits
        plain = own(input_ids=ids, use_cache=False).logits  # one causal sequence per row
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-3)  # the packing matters at these sizes


def test_document_ids_follow_transformers_packing_rule():
    from maskspec.integrations import hf

    pos = torch.tensor([[0, 1, 2, 0, 0, 1, 5, 6]])
    assert hf.document_ids(pos).tolist() == [[0, 0, 0, 1, 2, 2, 3, 3]]
