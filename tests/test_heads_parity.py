"""Fine-tuning heads against transformers' BERT heads: the same weights give the same eval-mode scores, and classifier
dropout sits where transformers puts it (sequence classification, regression and token tagging: before the output
layer; extractive QA: nowhere, BertForQuestionAnswering's qa_outputs reads the last hidden states directly)."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from tformer.interop.bert import load_hf_encoder
from tformer.models.gpt import GPTConfig
from tformer.models.heads import EncoderForTask, GPTForClassification, HeadConfig

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=40, classifier_dropout=0.3)

# (tformer task, transformers class, its output layer, labels)
HEADS = [
    ("classification", transformers.BertForSequenceClassification, "classifier", ["a", "b", "c"]),
    ("regression", transformers.BertForSequenceClassification, "classifier", []),
    ("tagging", transformers.BertForTokenClassification, "classifier", ["O", "B-X", "I-X"]),
    ("qa", transformers.BertForQuestionAnswering, "qa_outputs", []),
]


def _inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return ids, types, mask


def _pair(task, hf_class, layer, labels, tmp_path):
    """A transformers model with random weights and the tformer head holding the same weights."""
    torch.manual_seed(0)
    n = {"regression": 1, "qa": 2}.get(task, len(labels))
    hf = hf_class(transformers.BertConfig(**SMALL, num_labels=n)).eval()
    hf.bert.save_pretrained(tmp_path / "encoder")
    ours = EncoderForTask(load_hf_encoder(tmp_path / "encoder"), HeadConfig(task=task, labels=labels, dropout=0.3))
    ours.head.load_state_dict(getattr(hf, layer).state_dict())
    return hf, ours.eval()


def _uses_dropout(module: nn.Module) -> bool:
    """Does the module hold a dropout (torch's or tformer's) that drops anything?"""
    return any("Dropout" in type(m).__name__ and getattr(m, "p", 0) > 0 for m in module.children())


@pytest.mark.parametrize("task,hf_class,layer,labels", HEADS, ids=[h[0] for h in HEADS])
def test_heads_match_transformers(task, hf_class, layer, labels, tmp_path):
    hf, ours = _pair(task, hf_class, layer, labels, tmp_path)
    ids, types, mask = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask.long())
        mine = ours(ids, types, mask)
    if task == "qa":  # scores at real tokens (padding positions are never read)
        torch.testing.assert_close(mine[..., 0][mask], ref.start_logits[mask], atol=1e-5, rtol=0)
        torch.testing.assert_close(mine[..., 1][mask], ref.end_logits[mask], atol=1e-5, rtol=0)
    elif task == "tagging":
        torch.testing.assert_close(mine[mask], ref.logits[mask], atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(mine, ref.logits.squeeze(-1) if task == "regression" else ref.logits, atol=1e-5,
                                   rtol=0)
    # Dropout before the output layer where transformers has it, none where it has none.
    assert _uses_dropout(ours) == _uses_dropout(hf) == (task != "qa")


def test_the_qa_head_has_no_dropout_in_training():
    """Only the head in train mode, with dropout asked for: two passes give the same start and end scores
    (before, a QA head dropped 10% of the states it read, which transformers' and BERT's QA heads never do)."""
    torch.manual_seed(0)
    model = EncoderForTask(_tiny_encoder_config(), HeadConfig(task="qa", dropout=0.5))
    model.eval()
    model.head.train()
    model.dropout.train()
    ids, types, mask = _inputs()
    with torch.no_grad():
        first, second = model(ids, types, mask), model(ids, types, mask)
    assert torch.equal(first, second)
    assert model.head_config.dropout == 0.0 and model.to_dict()["head"]["dropout"] == 0.0  # saved as it is
    # A QA model saved before (its config says 0.1) loads without it too
    saved = {"model_type": "encoder_for_task", "encoder": _tiny_encoder_config().to_dict(),
             "head": {"task": "qa", "labels": [], "pooling": "pooler", "dropout": 0.1}}
    assert EncoderForTask.from_dict(saved).dropout.p == 0.0
    # The sentence heads keep theirs: the same test tells apart a head that drops.
    clf = EncoderForTask(_tiny_encoder_config(), HeadConfig(task="classification", labels=["a", "b"], dropout=0.5))
    clf.eval()
    clf.dropout.train()
    with torch.no_grad():
        assert not torch.equal(clf(ids, types, mask), clf(ids, types, mask))


def _tiny_encoder_config():
    from tformer.models.bert import BertConfig

    return BertConfig(vocab_size=99, d_model=32, n_heads=4, n_layers=1, d_ff=37, max_len=40, dropout=0.1,
                      attention_dropout=0.1)


def test_the_gpt1_head_drops_before_its_projection_as_openai_gpt_double_heads():
    """GPT-1's classifier: transformers' OpenAIGPTDoubleHeadsModel (GPT-1 fine-tuning with its auxiliary LM loss)
    puts summary_first_dropout (0.1 by default, the paper's "dropout to the classifier") before a linear map with a
    bias on the state at the classification token, and none after; tformer's head does the same. (It scores each
    choice with one output, where tformer's head has one per class; OpenAIGPTForSequenceClassification and
    GPT-2's, without dropout or bias, are not GPT-1's recipe.)"""
    hf = transformers.OpenAIGPTDoubleHeadsModel(transformers.OpenAIGPTConfig(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    summary = hf.multiple_choice_head
    assert isinstance(summary.first_dropout, nn.Dropout) and summary.first_dropout.p == 0.1
    assert isinstance(summary.last_dropout, nn.Identity) and isinstance(summary.activation, nn.Identity)
    ours = GPTForClassification(GPTConfig(vocab_size=50, max_len=16, d_model=32, n_heads=2, n_layers=1), n_labels=3,
                                dropout=summary.first_dropout.p)
    assert _uses_dropout(ours) and ours.dropout.p == summary.first_dropout.p
    assert ours.head.in_features == summary.summary.in_features and ours.head.bias is not None
    assert summary.summary.bias is not None
