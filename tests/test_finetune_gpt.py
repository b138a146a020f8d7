"""GPT-1 fine-tuning: a pretrained decoder as a classifier, through the library and the `tformer` command."""

from __future__ import annotations

import json

import pytest
import torch

from tformer.cli import main
from tformer.config import load_config
from tformer.data.labeled import TextExample as Example
from tformer.models.gpt import GPT, GPTConfig
from tformer.models.heads import GPTForClassification
from tformer.tasks.finetune import build_finetune_task, finetune_run_defaults, load_finetuned
from tformer.tasks.finetune_gpt import GPTClassificationTask
from tformer.tokenization import train_lm_tokenizer
from tformer.training import checkpoint
from tformer.training.loop import train

from test_finetune import BAD, FILL, GOOD, changed, sentiment_rows, snapshot, write_tsv


def save_gpt(path, tok, **config):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=48, d_model=32, n_heads=2, n_layers=2, dropout=0.0,
                          attention_dropout=0.0, **config))
    checkpoint.save_model(path, model, model.config.to_dict(), tok)
    return path


@pytest.fixture(scope="module")
def pretrained_gpt(tmp_path_factory):
    """A tiny 'pretrained' GPT directory: random weights, a byte-level BPE with <|endoftext|>."""
    texts = [" ".join(GOOD + BAD + FILL)] * 5
    tok = train_lm_tokenizer(texts, "byte_bpe", vocab_size=300)
    return save_gpt(tmp_path_factory.mktemp("gpt"), tok)


def gpt_run(tmp_path, pretrained, **overrides):
    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(160, 0))
    valid_file = write_tsv(tmp_path / "valid.tsv", sentiment_rows(40, 1))
    items = [f"data.train_file={train_file}", f"data.valid_file={valid_file}", "train.lr=3e-3",
             "train.max_epochs=10", "train.batch_size=16"] + [f"{k}={v}" for k, v in overrides.items()]
    run = load_config(None, items, base=finetune_run_defaults())
    run.model["pretrained"] = str(pretrained)
    return run


def test_cli_finetunes_a_gpt_with_the_gpt1_head(tmp_path, pretrained_gpt, capsys):
    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(160, 0))
    valid_file = write_tsv(tmp_path / "valid.tsv", sentiment_rows(40, 1))
    out = tmp_path / "clf"
    assert main(["finetune", "--model", str(pretrained_gpt), "--train", str(train_file), "--valid", str(valid_file),
                 "--out", str(out), "--epochs", "10", "--lr", "3e-3", "--batch-size", "16", "model.lm_weight=0.25",
                 "train.log_every=1000"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["valid"]["accuracy"] >= 0.9
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "gpt_for_classification" and saved["lm_weight"] == 0.25
    model, _ = load_finetuned(out)
    assert isinstance(model, GPTForClassification) and model.head_config.labels == ["0", "1"]
    assert main(["evaluate", "--model", str(out), "--data", str(valid_file)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(result["valid"]["accuracy"], abs=1e-4)
    unlabeled = tmp_path / "new.tsv"
    unlabeled.write_text("sentence\nthe film was superb\nan awful plot\n")
    assert main(["predict", "--model", str(out), "--input", str(unlabeled)]) == 0
    preds = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["label"] for p in preds] == ["1", "0"]
    # the GPT-1 head classifies; tagging and QA need an encoder
    assert main(["finetune", "--model", str(pretrained_gpt), "--train", str(train_file), "--out", str(tmp_path / "x"),
                 "--task", "tagging"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GPT" in err and "tagging" in err


def test_gpt1_input_transformation_and_truncation(tmp_path, pretrained_gpt):
    run = gpt_run(tmp_path, pretrained_gpt, **{"data.max_tokens": 12})
    task = build_finetune_task(run)
    assert isinstance(task, GPTClassificationTask) and task.max_tokens == 12
    tok, e = task.tokenizer, task.tokenizer.eos_id
    assert e is not None
    [item] = task.encode([Example(text="good film", pair="bad plot", label="1", line=2)], "train")
    assert item["ids"] == [e] + tok.encode("good film") + [e] + tok.encode("bad plot") + [e]
    assert item["label"] == 1
    long = " ".join(["terrible"] * 20)
    with pytest.warns(UserWarning, match="1 of 1 inputs"):
        [cut] = task.encode([Example(text=long, pair="fine", label="0", line=3)], "train")
    assert len(cut["ids"]) == 12 and cut["ids"][-1] == e  # the extract token survives; the long text is cut
    fine = tok.encode("fine")
    assert cut["ids"][-len(fine) - 2 : -1] == [e] + fine  # the short pair is kept whole


def test_character_vocabulary_without_end_token_uses_a_newline(tmp_path):
    tok = train_lm_tokenizer(["good bad film\n"], "char")
    path = save_gpt(tmp_path / "char-gpt", tok)
    rows = [("good film", "1"), ("bad film", "0")] * 4
    run = load_config(None, [f"data.train_file={write_tsv(tmp_path / 't.tsv', rows)}"], base=finetune_run_defaults())
    run.model["pretrained"] = str(path)
    task = build_finetune_task(run)
    [item] = task.encode([Example(text="good", pair="bad", label="1", line=2)], "train")
    assert item["ids"] == tok.encode("good") + tok.encode("\n") + tok.encode("bad")
    with pytest.raises(Exception, match=r"t.tsv:5.*'z'"):
        task.encode([Example(text="zz", pair=None, label="1", line=5)], "train")


def test_transfer_strategies_apply_to_the_decoder(tmp_path, pretrained_gpt):
    run = gpt_run(tmp_path, pretrained_gpt, **{"train.freeze_layers": 1, "train.max_epochs": 1})
    task = build_finetune_task(run)
    before = snapshot(task.model)
    train(task, run.train, tmp_path / "frozen", quiet=True)
    assert not changed(before, task.model, "gpt.tok_embed.") and not changed(before, task.model, "gpt.pos_embed.")
    assert not changed(before, task.model, "gpt.decoder.layers.0.")
    assert changed(before, task.model, "gpt.decoder.layers.1.") and changed(before, task.model, "head.")

    run = gpt_run(tmp_path, pretrained_gpt, **{"train.encoder_lr_scale": 0.5, "train.layer_decay": 0.25})
    task = build_finetune_task(run)
    scale_of = {id(p): g["lr_scale"] for g in task.parameter_groups(0.01) for p in g["params"]}
    gpt = task.model.gpt
    assert scale_of[id(task.model.head.weight)] == 1.0
    assert scale_of[id(gpt.decoder.layers[1].ff.w1.weight)] == pytest.approx(0.5)
    assert scale_of[id(gpt.decoder.layers[0].ff.w1.weight)] == pytest.approx(0.5 * 0.25)
    assert scale_of[id(gpt.tok_embed.weight)] == pytest.approx(0.5 * 0.25**2)  # tied to the LM output

    run = gpt_run(tmp_path, pretrained_gpt, **{"train.strategy": "feature_extraction", "train.max_epochs": 1})
    task = build_finetune_task(run)
    assert all(not p.requires_grad for p in task.model.gpt.parameters())
    assert all(p.requires_grad for p in task.model.head.parameters())


def test_auxiliary_lm_loss_reads_only_real_next_tokens():
    torch.manual_seed(0)
    model = GPTForClassification(GPTConfig(vocab_size=20, max_len=8, d_model=16, n_heads=2, n_layers=1,
                                           dropout=0.0, attention_dropout=0.0), labels=["a", "b"], dropout=0.0)
    ids = torch.randint(1, 20, (2, 6))
    lengths = torch.tensor([6, 3])
    loss, parts = model.loss(ids, lengths, torch.tensor([0, 1]))
    # Row 1 is padded after 3 tokens: its LM loss covers positions 0-1 only, and padding changes nothing.
    padded = ids.clone()
    padded[1, 3:] = 0
    loss_padded, parts_padded = model.loss(padded, lengths, torch.tensor([0, 1]))
    assert loss_padded.item() == pytest.approx(loss.item(), rel=1e-6)
    logits, lm_logits = model(ids, lengths)
    assert lm_logits.shape == (5 + 2, 20)
    expected = torch.nn.functional.cross_entropy(lm_logits, torch.cat([ids[0, 1:], ids[1, 1:3]]))
    assert parts["lm"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_attention_maps_of_a_finetuned_gpt_show_what_its_classifier_reads(tmp_path, pretrained_gpt, capsys):
    from tformer.viz.maps import attention_maps

    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(32, 0))
    out = tmp_path / "clf"
    assert main(["finetune", "--model", str(pretrained_gpt), "--train", str(train_file), "--out", str(out),
                 "--epochs", "1", "--batch-size", "16"]) == 0
    capsys.readouterr()
    one = attention_maps(out, "a good film")
    assert one.rows[0] == one.rows[-1] == "<|endoftext|>" and one.rows.count("<|endoftext|>") == 2
    two = attention_maps(out, "a good film", pair="a bad one")
    assert two.rows.count("<|endoftext|>") == 3 and two.weights.shape[2] == len(two.rows)
    model, tok = load_finetuned(out)
    rows = [Example("a", None, "good", 2), Example("b", None, "bad", 3)]
    task = GPTClassificationTask(gpt_run(tmp_path, pretrained_gpt), model.gpt, tok, rows)
    ids = task.encode([Example("a good film", "a bad one", None, 2)], "valid")[0]["ids"]  # what fine-tuning reads
    with torch.no_grad():
        direct = model.gpt(torch.tensor([ids]), need_weights=True).attentions
    assert torch.allclose(torch.from_numpy(two.weights), torch.stack(direct)[:, 0], atol=1e-6)


def test_gpt_pairs_are_cut_as_transformers_cuts_them_longest_first(tmp_path, pretrained_gpt):
    """A pair too long for data.max_tokens loses the tokens transformers' truncation="longest_first" takes (the
    tokenizers library's rule, which encoder pairs follow too): the longer text first, and when both must be cut,
    halves with the odd token to the text that was longer (to the second on a tie). GPT-1 pairs were cut one token
    at a time, from the first on a tie: 6 + 5 tokens in 7 kept 3 + 4 where transformers keeps 4 + 3."""
    import transformers
    from tokenizers import Tokenizer as HFTokenizer

    run = gpt_run(tmp_path, pretrained_gpt, **{"data.max_tokens": 12})
    task = build_finetune_task(run)
    tok = task.tokenizer
    # transformers sets truncation on the backend it wraps: give it a copy, not the task's
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(tok.backend.to_str()))
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its note that pairs return no overflowing tokens, per call
    try:
        _compare_pair_cuts(task, hf, GOOD + BAD + FILL)
    finally:
        transformers.logging.set_verbosity(verbosity)
    # A max_tokens that leaves no room for both texts beside <s> <d> <e> is a setting to change, not a cut
    task.max_tokens = 4
    with pytest.raises(Exception, match=r"data.max_tokens=4 leaves no room for both texts of a pair"):
        task.encode([Example(text="good film", pair="bad plot", label="1", line=2)], "train")


def _compare_pair_cuts(task, hf, words):
    import warnings

    tok, e = task.tokenizer, task.tokenizer.eos_id
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cut warning, once per encode
        for n1 in range(1, 9):
            for n2 in range(1, 9):
                text, pair = " ".join(words[:n1]), " ".join(words[-n2:])
                for max_tokens in range(5, 14):
                    task.max_tokens = max_tokens
                    [item] = task.encode([Example(text=text, pair=pair, label="1", line=2)], "train")
                    ids = item["ids"]
                    assert ids[0] == ids[-1] == e and ids.count(e) == 3 and len(ids) <= max_tokens
                    middle = ids.index(e, 1)
                    ours = (ids[1:middle], ids[middle + 1 : -1])
                    want = hf(text, pair, truncation="longest_first", max_length=max_tokens - 3,
                              add_special_tokens=False, return_token_type_ids=True)
                    types = want["token_type_ids"]
                    theirs = ([i for i, t in zip(want["input_ids"], types) if t == 0],
                              [i for i, t in zip(want["input_ids"], types) if t == 1])
                    assert ours == theirs, (n1, n2, max_tokens)
                    checked += len(tok.backend.encode(text).ids) + len(tok.backend.encode(pair).ids) > max_tokens - 3
    assert checked > 100  # most of the grid is cut


def test_gpt_pair_of_no_tokens_and_unseen_labels(tmp_path, pretrained_gpt):
    """As with an encoder: an empty second text is refused naming its line (it was read as `<s> a <d> <e>`), and a
    validation label the model was not trained on is scored as a miss, with a warning naming it."""
    from tformer.errors import TformerError

    task = build_finetune_task(gpt_run(tmp_path, pretrained_gpt))
    with pytest.raises(TformerError, match=r"valid.tsv:7: the text in column 'pair' gives no tokens"):
        task.encode([Example(text="good film", pair="", label="1", line=7)], "valid")
    rows = [Example("a good film", None, "1", 2), Example("an awful plot", None, "0", 3),
            Example("so so", None, "neutral", 4)]
    with pytest.warns(UserWarning, match=r"valid.tsv: 1 of 3 examples have labels the model was not trained on: "
                                         r"'neutral' \(1\); they are scored as misses"):
        items = task.encode(rows, "valid")
    scores = task.evaluate(task.model.eval(), rows, items)
    right = sum(task.labels[int(l.argmax())] == r.label for l, r in zip(task.predict_logits(task.model, items), rows))
    assert right <= 2 and scores["accuracy"] == pytest.approx(right / 3)  # "neutral" is never right
    known = task.predict_logits(task.model, items[:2])
    assert scores["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.stack(known), torch.tensor([1, 0]))), rel=1e-5)  # over the labels the model has


def test_accumulated_micro_batches_give_the_gradient_of_one_batch(tmp_path, pretrained_gpt, monkeypatch,
                                                                 step_gradients):
    """The auxiliary LM loss was a mean over each micro-batch's own next-token targets, scaled by its examples:
    accumulated, a micro-batch of short inputs weighted each of its targets more than one batch of them all would.
    Two micro-batches (2 short inputs, 4 long ones) now give the gradient one batch of the 6 gives."""
    grads = step_gradients
    counts = []
    for accum in (2, 1):
        run = gpt_run(tmp_path, pretrained_gpt, **{"train.accum_steps": accum, "train.max_steps": 1,
                                                   "train.clip_norm": 0, "train.schedule": "constant",
                                                   "model.classifier_dropout": 0.0, "model.lm_weight": 0.5})
        task = build_finetune_task(run)
        by_length = sorted(range(len(task.train_set)), key=lambda i: len(task.train_set[i]["ids"]))
        short, long = by_length[:2], by_length[-4:]
        batches = [short, long] if accum == 2 else [short + long]
        monkeypatch.setattr(task, "train_batches", lambda epoch, seed, batches=batches: batches)
        micro = [task.collate(b, torch.device("cpu")) for b in batches]
        counts.append([(task.count_tokens(m), task.count_examples(m)) for m in micro])
        if accum == 1:  # one batch alone: the loss the trainer takes is the head's, task mean + lambda x LM mean
            loss, _ = task.loss(task.model, micro[0])
            expected, _ = task.model.loss(micro[0]["ids"], micro[0]["attention_mask"].sum(1), micro[0]["labels"])
            assert (loss / counts[-1][0][0]).item() == pytest.approx(expected.item(), rel=1e-6)
        train(task, run.train, tmp_path / f"m{accum}", quiet=True)
    (tokens_a, examples_a), (tokens_b, examples_b) = counts[0]
    assert tokens_a / examples_a != tokens_b / examples_b  # targets per example differ: the case that went wrong
    assert len(grads) == 2 and len(grads[0]) == len(grads[1])
    for accumulated, whole in zip(*grads):
        torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-6)
