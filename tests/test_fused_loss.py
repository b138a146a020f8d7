"""The output projection fused with the label-smoothed loss gives the numbers of projection-then-loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tformer.models.gpt import GPT, GPTConfig
from tformer.models.transformer import Transformer, TransformerConfig
from tformer.training import losses
from tformer.training.losses import label_smoothed_cross_entropy, linear_label_smoothed_cross_entropy


@pytest.fixture
def small_chunks(monkeypatch):
    """Fused path for a small vocabulary, several chunks of rows."""
    monkeypatch.setattr(losses, "FUSED_MIN_VOCAB", 1)
    monkeypatch.setattr(losses, "FUSED_CHUNK_ELEMENTS", 64 * 50)  # 64 rows of a 50-word vocabulary


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fused_equals_projection_then_loss(small_chunks, eps):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(150, 16, generator=g, dtype=torch.float64)  # 3 chunks, the last one short
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64)
    target = torch.randint(1, 50, (150,), generator=g)
    target[[4, 77]] = 0  # padding

    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, nll, n = linear_label_smoothed_cross_entropy(h1, w1, target, eps, ignore_index=0)
    (0.7 * loss).backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = F.cross_entropy(h2 @ w2.t(), target, label_smoothing=eps, ignore_index=0, reduction="sum")
    (0.7 * ref).backward()
    ref_nll = F.cross_entropy(hidden @ weight.t(), target, ignore_index=0, reduction="sum")

    assert int(n) == 148
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(nll, ref_nll)
    torch.testing.assert_close(h1.grad, h2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)


def test_fused_gradcheck(small_chunks):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(70, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 50, (70,), generator=g)
    assert torch.autograd.gradcheck(lambda h, w: linear_label_smoothed_cross_entropy(h, w, target, 0.1)[0],
                                    (hidden, weight))


def test_fused_without_gradients_and_float32(small_chunks):
    g = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(100, 8, generator=g), torch.randn(50, 8, generator=g)
    target = torch.randint(0, 50, (100,), generator=g)
    with torch.no_grad():
        loss, nll, _ = linear_label_smoothed_cross_entropy(hidden, weight, target, 0.1)
    ref, ref_nll, _ = label_smoothed_cross_entropy(hidden @ weight.t(), target, 0.1)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(nll, ref_nll)


def test_the_default_thresholds_take_the_fused_path(monkeypatch):
    """An 8k vocabulary on a CPU goes through the fused function; a character vocabulary does not."""
    calls = []
    real = losses._LinearSmoothedCrossEntropy.apply
    monkeypatch.setattr(losses._LinearSmoothedCrossEntropy, "apply", lambda *a: calls.append(1) or real(*a))
    target = torch.randint(0, 65, (10,))
    linear_label_smoothed_cross_entropy(torch.randn(10, 4), torch.randn(65, 4), target)
    assert not calls
    linear_label_smoothed_cross_entropy(torch.randn(10, 4), torch.randn(8000, 4), target)
    assert calls


def test_translation_model_targets_give_the_task_loss(small_chunks):
    torch.manual_seed(0)
    c = TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=16, n_heads=2, d_ff=32,
                          n_encoder_layers=1, n_decoder_layers=1, share_embeddings=True, dropout=0.0)
    model = Transformer(c)
    src = torch.randint(3, 50, (4, 7))
    tgt_in = torch.randint(3, 50, (4, 6))
    tgt_out = torch.randint(3, 50, (4, 6))
    tgt_out[1, 4:] = c.pad_id
    out = model(src, tgt_in, targets=tgt_out, label_smoothing=0.1)
    assert out.logits is None and int(out.n_tokens) == 22
    keep = tgt_out != c.pad_id
    ref, ref_nll, _ = label_smoothed_cross_entropy(model(src, tgt_in, keep=keep).logits, tgt_out[keep], 0.1)
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.nll, ref_nll)
    out.loss.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref.backward()
    for a, b in zip(fused_grads, model.parameters()):
        torch.testing.assert_close(a, b.grad, atol=1e-6, rtol=1e-5)


def test_gpt_targets_give_the_task_loss(small_chunks):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, max_len=16, d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0,
                          attention_dropout=0.0))
    x, y = torch.randint(0, 50, (3, 8)), torch.randint(0, 50, (3, 8))
    out = model(x, targets=y)
    ref, ref_nll, _ = label_smoothed_cross_entropy(model(x).logits, y, 0.0)
    assert out.logits is None and int(out.n_tokens) == 24
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.nll, ref_nll)
