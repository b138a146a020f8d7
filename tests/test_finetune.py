"""Fine-tuning a pretrained encoder end to end: heads, strategies, distillation, formats, CLI (tiny models)."""

from __future__ import annotations

import json
import random
import re
import warnings
from dataclasses import replace

import pytest
import torch

from tformer.cli import main
from tformer.config import load_config
from tformer.encoder_tokenization import WORDPIECE_SPECIALS, EncoderTokenizer
from tformer.errors import TformerError
from tformer.models.bert import BertConfig, BertForPreTraining
from tformer.models.gpt import GPT, GPTConfig
from tformer.models.heads import EncoderForTask, GPTForClassification, HeadConfig
from tformer.tasks.finetune import (DistillationTask, FineTuneTask, build_finetune_task, finetune_run_defaults,
                                    fit_logistic_regression, load_finetuned)
from tformer.training import checkpoint
from tformer.training.distributed import DistInfo
from tformer.training.loop import schedule_config, train
from tformer.transfer import student_from_teacher

GOOD = ["good", "great", "fine", "lovely", "superb"]
BAD = ["bad", "awful", "poor", "dull", "terrible"]
FILL = ["the", "film", "was", "very", "plot", "and", "acting", "a", "story", "quite"]
ANIMALS = ["cat", "dog", "horse", "cow"]


def sentence(rng, polar):
    words = [rng.choice(FILL) for _ in range(rng.randint(2, 8))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(polar))
    return " ".join(words)


def sentiment_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        rows.append((sentence(rng, GOOD if label else BAD), str(label)))
    return rows


def words_vocabulary(folder) -> EncoderTokenizer:
    """A WordPiece vocabulary of the test words, their letters and ##letters, written as a vocab.txt: every test
    word is one token, so the tiny models here learn word-level tasks, and the fixture also covers loading a
    BERT vocab.txt. (It was written out first when the tokenizers library's trainer, which tformer used then,
    gave a different vocabulary in every process and these tests' scores changed with it.)"""
    words = sorted(set(GOOD + BAD + FILL + ANIMALS + ["sleeps", "in", "garden", "barn", "where", "does", "?", "."]))
    letters = sorted(set("".join(words)) - set(words))
    vocab = WORDPIECE_SPECIALS + words + letters + ["##" + c for c in sorted(set("".join(words)))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return EncoderTokenizer.load(folder / "vocab.txt")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny 'pretrained' encoder directory (random weights, a WordPiece vocabulary of the test words)."""
    path = tmp_path_factory.mktemp("pretrained")
    tok = words_vocabulary(tmp_path_factory.mktemp("vocab"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.vocab_size, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_len=64,
                        dropout=0.0, attention_dropout=0.0, pad_id=tok.pad_id)
    model = BertForPreTraining(config)
    checkpoint.save_model(path, model, model.config.to_dict(), tok)
    return path


def write_tsv(path, rows, header=("sentence", "label")):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_for(tmp_path, pretrained, task="classification", **overrides):
    train_rows = sentiment_rows(160, 0)
    valid_rows = sentiment_rows(40, 1)
    train_file = write_tsv(tmp_path / "train.tsv", train_rows)
    valid_file = write_tsv(tmp_path / "valid.tsv", valid_rows)
    items = [f"data.task={task}", f"data.train_file={train_file}", f"data.valid_file={valid_file}",
             "train.lr=3e-3", "train.max_epochs=10", "train.batch_size=16"]
    items += [f"{k}={v}" for k, v in overrides.items()]
    run = load_config(None, items, base=finetune_run_defaults())
    run.model["pretrained"] = str(pretrained)
    return run


def tagging_run(path, lines, pretrained, epochs: int):
    """A tagging run that trains and validates on the CoNLL `lines`, written to `path`."""
    path.write_text("\n".join(lines) + "\n")
    run = load_config(None, ["data.task=tagging", f"data.train_file={path}", f"data.valid_file={path}",
                             "train.lr=3e-3", f"train.max_epochs={epochs}", "train.batch_size=16"],
                      base=finetune_run_defaults())
    run.model["pretrained"] = str(pretrained)
    return run


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model, prefix):
    return any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n.startswith(prefix))


def test_sentence_classification_learns_and_reports_metrics(tmp_path, pretrained):
    run = run_for(tmp_path, pretrained)
    task = build_finetune_task(run)
    assert task.labels == ["0", "1"]
    assert run.train.max_steps == 10 * 10  # epochs x batches
    assert schedule_config(run.train, task, DistInfo()).warmup_steps == 10  # BERT's 10% warmup
    state = train(task, run.train, tmp_path / "out", quiet=True)
    valid = state.last_valid
    assert valid["accuracy"] >= 0.9 and valid["macro_f1"] >= 0.9 and valid["mcc"] >= 0.8
    model, tok = load_finetuned(tmp_path / "out")
    records = task.predict(model, [type(e)(text="a lovely film", pair=None, label=None, line=1)
                                   for e in task.valid_data[:1]])
    assert records[0]["label"] == "1" and records[0]["probabilities"]["1"] > 0.5


def test_feature_extraction_trains_only_the_head(tmp_path, pretrained):
    run = run_for(tmp_path, pretrained, **{"train.strategy": "feature_extraction", "train.max_epochs": 1})
    task = build_finetune_task(run)
    before = snapshot(task.model)
    train(task, run.train, tmp_path / "out", quiet=True)
    assert not changed(before, task.model, "bert.") and changed(before, task.model, "head.")
    for extra, named in (({"train.gradual_unfreezing": True}, "train.gradual_unfreezing"),
                         ({"train.freeze_layers": 1}, "train.freeze_layers=1")):  # they contradict a frozen encoder
        with pytest.raises(TformerError, match=f"{named} goes with --strategy full"):
            build_finetune_task(run_for(tmp_path, pretrained, **{"train.strategy": "feature_extraction", **extra}))


def test_freezing_lower_layers(tmp_path, pretrained):
    run = run_for(tmp_path, pretrained, **{"train.freeze_layers": 1, "train.max_epochs": 1})
    task = build_finetune_task(run)
    before = snapshot(task.model)
    train(task, run.train, tmp_path / "out", quiet=True)
    assert not changed(before, task.model, "bert.embeddings.")
    assert not changed(before, task.model, "bert.encoder.layers.0.")
    assert changed(before, task.model, "bert.encoder.layers.1.") and changed(before, task.model, "head.")


def test_discriminative_learning_rates_reach_the_optimizer(tmp_path, pretrained):
    run = run_for(tmp_path, pretrained, **{"train.encoder_lr_scale": 0.5, "train.layer_decay": 0.25})
    task = build_finetune_task(run)
    groups = task.parameter_groups(0.01)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    m = task.model
    assert scale_of[id(m.head.weight)] == 1.0
    assert scale_of[id(m.bert.encoder.layers[1].ff.w1.weight)] == pytest.approx(0.5)  # top layer
    assert scale_of[id(m.bert.encoder.layers[0].ff.w1.weight)] == pytest.approx(0.5 * 0.25)
    assert scale_of[id(m.bert.embeddings.tok_embed.weight)] == pytest.approx(0.5 * 0.25**2)


def test_gradual_unfreezing_trains_the_top_layer_first(tmp_path, pretrained):
    run = run_for(tmp_path, pretrained, **{"train.gradual_unfreezing": "true", "train.max_epochs": 1})
    task = build_finetune_task(run)
    before = snapshot(task.model)
    train(task, run.train, tmp_path / "out", quiet=True)  # epoch 0 only: head + top layer
    assert changed(before, task.model, "head.") and changed(before, task.model, "bert.encoder.layers.1.")
    assert not changed(before, task.model, "bert.encoder.layers.0.")
    assert not changed(before, task.model, "bert.embeddings.")



def _gradual_unfreezing_rank(rank: int, port: int, tmp: str, pretrained: str) -> None:
    import os
    from pathlib import Path

    from tformer.training import distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = distributed.setup("cpu")
    try:
        run = run_for(Path(tmp) / f"data{rank}", pretrained, **{"train.gradual_unfreezing": "true",
                                                                  "train.max_epochs": 2})
        task = build_finetune_task(run)
        train(task, run.train, Path(tmp) / "out", info=info, quiet=True)
        torch.save(snapshot(task.model), Path(tmp) / f"rank{rank}.pt")
    finally:
        distributed.teardown(info)


def test_gradual_unfreezing_under_ddp_trains_each_epochs_layers_alike_on_every_rank(tmp_path, pretrained):
    """DDP syncs the parameters trainable when it was built: it stalled on the first step once layers were frozen
    after it ("Expected to have finished reduction"), and would leave layers unfrozen later unsynchronised."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for rank in (0, 1):
        (tmp_path / f"data{rank}").mkdir()
    before = snapshot(build_finetune_task(run_for(tmp_path, pretrained)).model)
    mp.spawn(_gradual_unfreezing_rank, args=(port, str(tmp_path), str(pretrained)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(ranks[0][n], ranks[1][n]) for n in ranks[0])
    moved = {n for n in before if not n.startswith("head.") and not torch.equal(before[n], ranks[0][n])}
    assert any(n.startswith("bert.encoder.layers.1.") for n in moved)  # epoch 0 and 1
    assert any(n.startswith("bert.encoder.layers.0.") for n in moved)  # unfrozen at epoch 1
    assert not any(n.startswith("bert.embeddings.") for n in moved)  # not before epoch 2

def test_slanted_triangular_schedule_runs(tmp_path, pretrained):
    from tformer.training.loop import learning_rate

    run = run_for(tmp_path, pretrained, **{"train.schedule": "slanted_triangular", "train.max_steps": 100,
                                           "train.lr": 0.01})
    rates = [learning_rate(run.train, s, 32) for s in range(0, 101)]
    assert max(rates) == pytest.approx(0.01) and rates.index(max(rates)) == 10
    assert rates[0] == pytest.approx(0.01 / 32) and rates[100] == pytest.approx(0.01 / 32)


def test_early_stopping_stops_and_keeps_the_best(tmp_path, pretrained):
    # A rate too small to move a float32 weight (0 itself is refused): the metric never improves after the first
    # validation, so training stops after `patience` more.
    run = run_for(tmp_path, pretrained, **{"train.lr": 1e-30, "train.early_stopping": 2, "train.eval_every": 2,
                                           "train.max_epochs": 5})
    task = build_finetune_task(run)
    state = train(task, run.train, tmp_path / "out", quiet=True)
    assert state.step == 6  # validations at 2 (best), 4, 6 -> stop
    saved = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert saved["trainer"]["step"] == 2  # the best checkpoint is the one on disk
    assert state.early_stopping["best_step"] == 2  # what the command's summary reports beside "steps"


def test_sentence_pairs_regression_and_tagging(tmp_path, pretrained, capsys):
    rng = random.Random(0)
    # pairs: label 1 when both sentences name the same animal
    rows = []
    for i in range(200):
        a = rng.choice(ANIMALS)
        b = a if i % 2 else rng.choice([x for x in ANIMALS if x != a])
        rows.append({"first": f"the {a} sleeps", "second": f"a {b} in the barn", "y": str(i % 2)})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = load_config(None, ["data.task=classification", f"data.train_file={tmp_path / 'pairs.jsonl'}",
                             f"data.valid_file={tmp_path / 'pairs.jsonl'}", "data.text_column=first",
                             "data.pair_column=second", "data.label_column=y", "train.lr=3e-3", "train.max_epochs=40",
                             "train.batch_size=16"], base=finetune_run_defaults())
    run.model["pretrained"] = str(pretrained)
    task = build_finetune_task(run)
    item = task.train_set[0]
    assert 1 in item["type_ids"]  # segment B
    state = train(task, run.train, tmp_path / "pairs", quiet=True)
    assert state.last_valid["accuracy"] > 0.6

    # regression: the score is the number of positive words
    rows = []
    for i in range(200):
        k = i % 3
        words = [rng.choice(FILL) for _ in range(4)] + [rng.choice(GOOD) for _ in range(k)]
        rng.shuffle(words)
        rows.append((" ".join(words), str(float(k))))
    write_tsv(tmp_path / "reg.tsv", rows, ("text", "score"))
    run = load_config(None, ["data.task=regression", f"data.train_file={tmp_path / 'reg.tsv'}",
                             f"data.valid_file={tmp_path / 'reg.tsv'}", "data.text_column=text",
                             "data.label_column=score", "train.lr=3e-3", "train.max_epochs=10", "train.batch_size=16"],
                      base=finetune_run_defaults())
    run.model["pretrained"] = str(pretrained)
    state = train(build_finetune_task(run), run.train, tmp_path / "reg", quiet=True)
    assert state.last_valid["pearson"] > 0.8

    # tagging: animals are entities (B-ANI), CoNLL columns with -DOCSTART-
    lines = ["-DOCSTART- -X- O", ""]
    for i in range(150):
        words = [rng.choice(FILL) for _ in range(4)]
        words.insert(rng.randrange(5), rng.choice(ANIMALS))
        lines += [f"{w} X {'B-ANI' if w in ANIMALS else 'O'}" for w in words] + [""]
    run = tagging_run(tmp_path / "ner.txt", lines, pretrained, epochs=6)
    task = build_finetune_task(run)
    assert task.labels[0] == "O"
    x = task.train_set[0]
    assert sum(label != -100 for label in x["labels"]) == 5  # one label per word, on its first sub-token
    state = train(task, run.train, tmp_path / "ner", quiet=True)
    assert state.last_valid["f1"] > 0.9
    # text to tag needs no tag column: one token a line is enough
    (tmp_path / "tokens.txt").write_text(f"the\n{ANIMALS[0]}\nsat\n\n{ANIMALS[1]}\n")
    assert main(["predict", "--model", str(tmp_path / "ner"), "--input", str(tmp_path / "tokens.txt")]) == 0
    tagged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [t["tokens"] for t in tagged] == [["the", ANIMALS[0], "sat"], [ANIMALS[1]]]
    assert tagged[0]["tags"][1] == "B-ANI" and tagged[1]["tags"] == ["B-ANI"]
    # A word the tokenizer drops whole (a soft hyphen) is tagged O in its place; the words after keep theirs.
    (tmp_path / "tokens.txt").write_text(f"the\n\u00ad\n{ANIMALS[0]}\nsat\n")
    assert task.tokenizer.backend.encode(["\u00ad"], is_pretokenized=True, add_special_tokens=False).ids == []
    assert main(["predict", "--model", str(tmp_path / "ner"), "--input", str(tmp_path / "tokens.txt")]) == 0
    tagged = json.loads(capsys.readouterr().out)
    assert tagged["tags"][1:3] == ["O", "B-ANI"] and len(tagged["tags"]) == 4
    # Past the model's positions words get no prediction (O), and that is said.
    long_sentence = [ANIMALS[0]] * 80
    with pytest.warns(UserWarning, match="1 of 1 sentences were longer than"):
        items = task.encode([replace(task_sentence(long_sentence), tags=["O"] * 80)], "input")
    assert items[0]["first"][-1] is None and items[0]["first"][0] == 1


def test_extractive_qa_learns_to_point_at_the_answer(tmp_path, pretrained):
    rng = random.Random(0)
    places = ["garden", "barn"]
    data = []
    for i in range(120):
        animal, place = rng.choice(ANIMALS), rng.choice(places)
        filler = " ".join(rng.choice(FILL) for _ in range(rng.randint(0, 4)))
        context = f"{filler} the {animal} sleeps in the {place} ."
        data.append({"title": "t", "paragraphs": [{"context": context, "qas": [
            {"id": f"q{i}", "question": f"where does the {animal} sleep ?",
             "answers": [{"text": place, "answer_start": context.index(f"the {place}") + 4}]}]}]})
    (tmp_path / "qa.json").write_text(json.dumps({"version": "1.1", "data": data}))
    run = load_config(None, ["data.task=qa", f"data.train_file={tmp_path / 'qa.json'}",
                             f"data.valid_file={tmp_path / 'qa.json'}", "data.max_tokens=24", "data.doc_stride=8",
                             "train.lr=3e-3", "train.max_epochs=15", "train.batch_size=16"], base=finetune_run_defaults())
    run.model["pretrained"] = str(pretrained)
    state = train(build_finetune_task(run), run.train, tmp_path / "qa", quiet=True)
    assert state.last_valid["exact_match"] > 80 and state.last_valid["f1"] >= state.last_valid["exact_match"]


def test_qa_windows_shrink_with_a_model_of_few_positions(tmp_path, pretrained):
    # The 64-position model cuts QA's default 384-token windows; the default stride of 128 shrinks with them
    # (to 21) instead of leaving no room for context, and a stride that cannot fit names the model's limit.
    context = " ".join(["the cat sleeps in the garden ."] * 30)
    data = [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q0", "question": "where does the cat sleep ?", "answers": [{"text": "garden", "answer_start": 22}]}]}]}]
    (tmp_path / "qa.json").write_text(json.dumps({"version": "1.1", "data": data}))
    options = ["data.task=qa", f"data.train_file={tmp_path / 'qa.json'}"]
    run = load_config(None, options, base=finetune_run_defaults("qa"))
    run.model["pretrained"] = str(pretrained)
    task = build_finetune_task(run)
    assert task.max_tokens == 64 and len(task.train_set) > 3
    assert all(len(f["ids"]) <= 64 for f in task.train_set)
    run = load_config(None, options + ["data.doc_stride=300"], base=finetune_run_defaults("qa"))  # 50 of 64
    run.model["pretrained"] = str(pretrained)
    with pytest.raises(TformerError, match="the model's 64 positions.*data.doc_stride=300, scaled to 50 for the "
                                           "model's 64 positions.*lower data.doc_stride$"):
        build_finetune_task(run)  # the stride as the user gave it, and what it became
    data[0]["paragraphs"][0]["qas"][0]["answers"] = []
    (tmp_path / "qa.json").write_text(json.dumps({"version": "1.1", "data": data}))
    run = load_config(None, options, base=finetune_run_defaults("qa"))
    run.model["pretrained"] = str(pretrained)
    with pytest.raises(TformerError, match=r"qa\.json: example q0: no answer to train on"):
        build_finetune_task(run)


def test_cli_finetune_predict_evaluate_and_errors(tmp_path, pretrained, capsys):
    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(120, 0))
    valid_file = write_tsv(tmp_path / "valid.tsv", sentiment_rows(30, 1))
    out = tmp_path / "clf"
    assert main(["finetune", "--model", str(pretrained), "--train", str(train_file), "--valid", str(valid_file),
                 "--out", str(out), "--epochs", "10", "--lr", "3e-3", "--batch-size", "16", "train.log_every=1000"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["valid"]["accuracy"] > 0.8
    assert main(["evaluate", "--model", str(out), "--data", str(valid_file)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == pytest.approx(result["valid"]["accuracy"], abs=1e-4)
    unlabeled = tmp_path / "new.tsv"
    unlabeled.write_text("sentence\nwhat a superb film\nan awful plot\n")
    assert main(["predict", "--model", str(out), "--input", str(unlabeled)]) == 0
    preds = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["label"] for p in preds] == ["1", "0"]
    # data.* / train.* options replace the saved ones for evaluate and predict; the model's shape cannot change
    assert main(["evaluate", "--model", str(out), "--data", str(valid_file), "train.batch_size=3"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(scores["accuracy"], abs=1e-6)
    for command in (["evaluate", "--model", str(out), "--data", str(valid_file)],
                    ["predict", "--model", str(out), "--input", str(unlabeled)]):
        assert main(command + ["data.text_column=review"]) == 2  # applied: the file has no such column
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "review" in err
    assert main(["evaluate", "--model", str(out), "--data", str(valid_file), "model.d_model=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.d_model=8" in err
    # feature extraction after fine-tuning: the fine-tuned encoder's vectors, without its head
    assert main(["embed", "--model", str(out), "--sentence", "what a superb film"]) == 0
    vector = json.loads(capsys.readouterr().out)["vector"]
    model, tok = load_finetuned(out)
    with torch.no_grad():
        enc = tok.encode("what a superb film")
        cls = model.bert(torch.tensor([enc.ids]), torch.tensor([enc.type_ids])).hidden[0, 0]
    assert vector == pytest.approx(cls.tolist(), abs=1e-5)
    for command in (["evaluate", "--model", str(out), "--data", str(valid_file)],
                    ["predict", "--model", str(out), "--input", str(unlabeled)]):
        assert main(command + ["data.task=regression"]) == 2  # the head answers its own task only
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "data.task cannot change from 'classification' to 'regression'" in err
    # a label training never saw is scored as a miss (as sklearn scores a class never predicted), and said
    bad = write_tsv(tmp_path / "bad.tsv", [("a fine film", "1"), ("so so", "neutral")])
    assert main(["evaluate", "--model", str(out), "--data", str(bad)]) == 0
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "bad.tsv: 1 of 2 examples have labels the model was not trained on: " \
        "'neutral' (1); they are scored as misses (it predicts only 0, 1)" in err
    scores = json.loads(captured.out)
    # 1 right; "so so" is a miss whatever is predicted for it: F1 1, 0 and 0 over 1, neutral and a wrong 0, or
    # 2/3 and 0 over 1 and neutral
    assert scores["accuracy"] == 0.5 and scores["macro_f1"] == pytest.approx(1 / 3, abs=1e-4)
    assert scores["loss"] > 0  # over the example whose label the model has
    # a missing column
    assert main(["finetune", "--model", str(pretrained), "--train", str(train_file), "--out", str(tmp_path / "x"),
                 "--text-column", "review"]) == 2
    assert "review" in capsys.readouterr().err
    # a fine-tuned model trains on from where it was (a random start would be near 50% after this)
    assert main(["finetune", "--model", str(out), "--train", str(train_file), "--valid", str(valid_file),
                 "--out", str(tmp_path / "more"), "--epochs", "1", "--lr", "1e-6", "train.log_every=1000"]) == 0
    more = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert more["valid"]["accuracy"] == pytest.approx(result["valid"]["accuracy"], abs=0.05)
    assert main(["finetune", "--model", str(out), "--train", str(train_file), "--out", str(tmp_path / "y"),
                 "--task", "regression"]) == 2
    assert "fine-tuned for 'classification'" in capsys.readouterr().err


def test_distillation_student_from_every_other_layer(tmp_path, pretrained):
    run = run_for(tmp_path, pretrained)
    teacher_task = build_finetune_task(run)
    train(teacher_task, run.train, tmp_path / "teacher", quiet=True)
    teacher = teacher_task.model.eval()
    student = student_from_teacher(teacher, every=2)
    assert student.bert.config.n_layers == 1
    assert torch.equal(student.bert.encoder.layers[0].ff.w1.weight, teacher.bert.encoder.layers[0].ff.w1.weight)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    distill = DistillationTask(run, student, teacher, teacher_task.tokenizer, teacher_task.valid_data,
                               teacher_task.valid_data, temperature=2.0, alpha=0.5)
    distill.train_set = teacher_task.train_set
    state = train(distill, run.train, tmp_path / "student", quiet=True)
    assert state.last_valid["accuracy"] >= 0.85
    assert all(not p.requires_grad for p in teacher.parameters())
    with pytest.raises(TformerError, match="alpha in \\[0, 1\\]"):
        DistillationTask(run, student, teacher, teacher_task.tokenizer, [], alpha=1.5)
    student.train()
    distill.predict(student, teacher_task.valid_data[:2])
    assert student.training  # predicting leaves the mode as it was


def test_gpt1_classification_head_with_auxiliary_lm_loss():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=20, max_len=16, d_model=32, n_heads=2, n_layers=1, dropout=0.0,
                        attention_dropout=0.0))
    model = GPTForClassification(gpt, n_labels=2, lm_weight=0.5, dropout=0.0)
    ids = torch.randint(3, 20, (8, 10))
    ids[:4, 2] = 1  # class 1: token 1 appears
    labels = torch.tensor([1] * 4 + [0] * 4)
    lengths = torch.full((8,), 10)
    loss, parts = model.loss(ids, lengths, labels)
    assert loss.item() == pytest.approx(parts["task"].item() + 0.5 * parts["lm"].item(), rel=1e-5)
    model.lm_weight = 0.0
    logits, _ = model(ids, lengths)
    assert model.loss(ids, lengths, labels)[0].item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    model.lm_weight = 0.5
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        model.loss(ids, lengths, labels)[0].backward()
        opt.step()
    assert (model(ids, lengths)[0].argmax(-1) == labels).all()
    assert gpt.tok_embed.weight.grad is not None  # the decoder itself is fine-tuned
    # One-token inputs (a character vocabulary has no start or extract token) have no next token: a batch of
    # only those has an LM loss of 0 (a mean of nothing was NaN, and stopped training), the task loss as it is.
    short = torch.tensor([[3, 0], [5, 0]])
    loss, parts = model.loss(short, torch.tensor([1, 1]), torch.tensor([0, 1]))
    assert parts["lm"].item() == 0.0 and loss.item() == pytest.approx(parts["task"].item())


def test_logistic_regression_on_frozen_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g) * 3 + 5
    w = torch.randn(16, generator=g)
    y = (x @ w > (x @ w).median()).long()
    layer = fit_logistic_regression(x, y, 2, l2=1e-4)
    assert (layer(x).argmax(-1) == y).float().mean() > 0.97


def test_bad_options_are_one_line_errors(tmp_path, pretrained):
    run = run_for(tmp_path, pretrained, **{"train.freeze_layers": 1})
    run.model["pretrained"] = str(tmp_path / "nowhere")
    with pytest.raises(TformerError, match="nowhere"):
        build_finetune_task(run)
    run = run_for(tmp_path, pretrained, **{"data.label_column": "missing"})
    with pytest.raises(TformerError, match="missing"):
        build_finetune_task(run)
    head = HeadConfig("classification", ["only"])
    with pytest.raises(ValueError, match="at least 2 labels"):
        EncoderForTask(BertConfig(vocab_size=10, d_model=8, n_heads=2, n_layers=1, d_ff=8), head)


def test_finetune_refuses_what_it_would_get_wrong(tmp_path, pretrained, capsys):
    from conftest import assert_one_line_error, run_cli

    one_label = write_tsv(tmp_path / "one.tsv", [("a good film", "pos"), ("a great film", "pos")])
    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(40, 0))
    base = ["finetune", "--model", pretrained, "--out", tmp_path / "clf"]
    code, _, err = run_cli(capsys, *base, "--train", one_label)
    assert_one_line_error(code, err, "one.tsv", "'pos'", "at least two")
    code, _, err = run_cli(capsys, *base, "--train", train_file, "--epochs", "0")
    assert_one_line_error(code, err, "never end")  # before: trained until killed
    for option, named in (("model.foo=1", "model.foo"), ("model.lm_weight=0.5", "model.lm_weight"),
                          ("model.classifier_dropout=abc", "abc"), ("train.layer_decay=-1", "train.layer_decay"),
                          ("train.early_stopping=2", "--valid")):
        code, _, err = run_cli(capsys, *base, "--train", train_file, option)
        assert_one_line_error(code, err, named)
    code, _, err = run_cli(capsys, *base[:-1], pretrained, "--train", train_file)
    assert_one_line_error(code, err, "is the --model being fine-tuned")
    assert not (tmp_path / "clf").exists()
    # an unseen tag that entity scores cannot read is named at its own line (one token a line), not at its
    # sentence's first line; an unseen entity tag is a miss (test_unseen_validation_tags_are_scored_as_misses)
    (tmp_path / "ner.txt").write_text("cat X B-ANI\nthe X O\n\ndog X B-ANI\n")
    (tmp_path / "dev.txt").write_text("the X O\nfilm X O\nhorse X NEW\n")
    code, _, err = run_cli(capsys, *base, "--task", "tagging", "--train", tmp_path / "ner.txt",
                           "--valid", tmp_path / "dev.txt", "--epochs", "1")
    assert_one_line_error(code, err, "'NEW'", "dev.txt:3", "scored as entities")
    # question answering gets BERT's 384-token windows unless told otherwise (128 left no room for the stride)
    assert finetune_run_defaults("qa").data.max_tokens == 384 > finetune_run_defaults().data.max_tokens


def test_finetune_resume_continues_and_refuses_changes(tmp_path, pretrained, capsys, monkeypatch):
    from conftest import assert_one_line_error, run_cli

    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(32, 0))
    out = tmp_path / "clf"
    base = ["finetune", "--model", pretrained, "--train", train_file, "--out", out, "--batch-size", "16"]
    code, stdout, err = run_cli(capsys, *base, "--epochs", "1")
    assert code == 0, err
    assert json.loads(stdout.splitlines()[-1])["steps"] == 2
    code, stdout, err = run_cli(capsys, *base, "--epochs", "2", "--resume")  # the steps of 2 epochs, counted again
    assert code == 0, err
    assert json.loads(stdout.splitlines()[-1])["steps"] == 4
    # The same file written another way is the same file, and without --train the run's own is read (a path
    # compared as text refused ./train.tsv, and --train was required even to resume).
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(capsys, *base[:4], "./train.tsv", *base[5:], "--epochs", "3", "--resume")
    assert code == 0, err
    assert json.loads(stdout.splitlines()[-1])["steps"] == 6
    code, stdout, err = run_cli(capsys, *base[:3], *base[5:], "--epochs", "4", "--resume")
    assert code == 0, err
    assert json.loads(stdout.splitlines()[-1])["steps"] == 8
    code, _, err = run_cli(capsys, *base[:3], *base[5:])
    assert_one_line_error(code, err, "--train is needed")
    # A run of another task resumes without --task (it defaulted to classification and was refused).
    scores = write_tsv(tmp_path / "scores.tsv", [(text, f"{i % 5 / 4:.2f}") for i, (text, _) in
                                                 enumerate(sentiment_rows(32, 2))])
    regression = ["finetune", "--model", pretrained, "--train", scores, "--out", tmp_path / "reg", "--batch-size", "16"]
    code, _, err = run_cli(capsys, *regression, "--task", "regression", "--epochs", "1")
    assert code == 0, err
    code, stdout, err = run_cli(capsys, *regression, "--epochs", "2", "--resume")
    assert code == 0, err
    assert json.loads(stdout.splitlines()[-1])["steps"] == 4
    other = write_tsv(tmp_path / "other.tsv", sentiment_rows(32, 1))
    code, _, err = run_cli(capsys, *base[:4], other, *base[5:], "--resume")
    assert_one_line_error(code, err, "--resume", "data.train_file")
    code, _, err = run_cli(capsys, "finetune", "--model", tmp_path, "--train", train_file, "--out", out, "--resume")
    assert_one_line_error(code, err, "--resume", "fine-tunes")
    # options that shape the optimiser's groups are named, not reported as an optimizer.pt that does not fit
    for option, name in ((["--strategy", "feature_extraction"], "train.strategy"),
                         (["--freeze-layers", "1"], "train.freeze_layers"),
                         (["train.layer_decay=0.5"], "train.layer_decay"),
                         (["train.encoder_lr_scale=0.5"], "train.encoder_lr_scale")):
        code, _, err = run_cli(capsys, *base, "--resume", *option)
        assert_one_line_error(code, err, "--resume", name)


def task_sentence(tokens):
    from tformer.data.labeled import TaggedSentence

    return TaggedSentence(tokens=list(tokens), tags=["O"] * len(tokens), line=1)


def test_epoch_limited_fine_tuning_counts_the_steps_it_takes(tmp_path, pretrained):
    """The linear schedule ends at the last step the trainer takes: whole groups of accum_steps batches (a
    partial group at the end of an epoch is not a step)."""
    from tformer.tasks.finetune import finetune_run_defaults

    assert finetune_run_defaults("regression").data.task == "regression"
    with pytest.raises(TformerError, match="data.task: 'regresion' is not one of"):
        finetune_run_defaults("regresion")
    run = run_for(tmp_path, pretrained, **{"train.accum_steps": 3, "train.max_epochs": 1})
    task = build_finetune_task(run)
    batches = len(task.train_batches(0, run.train.seed))
    assert batches % 3 and run.train.max_steps == batches // 3
    state = train(task, run.train, tmp_path / "m", quiet=True)
    assert state.step == run.train.max_steps


def test_tags_that_are_not_entities_are_scored_by_accuracy(tmp_path, pretrained):
    """Parts of speech (NN, PRP$, ...) are not O/B-/I- entity tags: they train, validate and save, scored by the
    share of words tagged right (entity scoring stopped such a run at its first validation, unsaved)."""
    rng = random.Random(3)
    lines = []
    for _ in range(60):
        words = [rng.choice(FILL) for _ in range(3)] + [rng.choice(ANIMALS)]
        lines += [f"{w} {'NN' if w in ANIMALS else 'PRP$'}" for w in words] + [""]
    run = tagging_run(tmp_path / "pos.txt", lines, pretrained, epochs=3)
    task = build_finetune_task(run)
    assert task.selection_metric == ("tag_accuracy", "max")
    state = train(task, run.train, tmp_path / "pos", quiet=True)
    assert set(state.last_valid) == {"tag_accuracy"} and state.last_valid["tag_accuracy"] > 0.6
    assert (tmp_path / "pos" / "model.safetensors").is_file()


def test_embed_reads_a_fine_tuned_model_from_python(tmp_path, pretrained):
    """Feature extraction after fine-tuning: the encoder under the task head, as `tformer embed` reads it."""
    from tformer.tasks.encoding import embed

    run = run_for(tmp_path, pretrained, **{"train.max_steps": 2})
    task = build_finetune_task(run)
    model = task.model.eval()
    texts = ["a good film", "a bad one"]
    torch.testing.assert_close(embed(model, task.tokenizer, texts, pooling="mean"),
                               embed(model.bert, task.tokenizer, texts, pooling="mean"))
    with pytest.raises(TformerError, match="the pooler reads the last layer only"):
        embed(model, task.tokenizer, texts, pooling="pooler", layers=[1])


def test_a_fine_tuned_model_from_python_is_used_for_its_own_task(tmp_path, pretrained):
    from tformer.tasks.finetune import task_for_model

    run = run_for(tmp_path, pretrained, **{"train.max_steps": 1})
    task = build_finetune_task(run)
    other = finetune_run_defaults("qa")
    with pytest.raises(TformerError, match="data.task is 'qa', but the model's head was fine-tuned for "
                                           "'classification'"):
        task_for_model(other, task.model, task.tokenizer, [])


def test_fine_tuning_on_keeps_the_head_it_was_given(tmp_path, pretrained):
    run = run_for(tmp_path, pretrained, **{"train.max_steps": 1})
    train(build_finetune_task(run), run.train, tmp_path / "first", quiet=True)
    again = run_for(tmp_path, tmp_path / "first", **{"train.max_steps": 1})
    again.model["pooling"] = "mean"  # the head was trained on the pooler's output; it used to be ignored
    with pytest.raises(TformerError, match="model.pooling cannot change from 'pooler' to 'mean'"):
        build_finetune_task(again)
    del again.model["pooling"]
    assert build_finetune_task(again).model.head_config.pooling == "pooler"


def test_training_options_fine_tuning_has_no_use_for_are_refused(tmp_path, pretrained):
    """train.label_smoothing and train.max_tokens were accepted and changed nothing (byte-identical weights)."""
    for key, value in (("label_smoothing", 0.5), ("max_tokens", 50)):
        run = run_for(tmp_path, pretrained)
        setattr(run.train, key, value)
        with pytest.raises(TformerError, match=rf"train.{key}={value}: fine-tuning does not use it"):
            build_finetune_task(run)


def test_tagging_with_byte_level_bpe_reads_words_as_running_text():
    """A RoBERTa-style tokenizer splits a word after a space ("Ġworld") differently from one that starts the text:
    the words of a CoNLL sentence get the pieces the encoder saw in running text (each word once split as a
    text's first word: "wor", "ld"), with each word's tag on its first piece."""
    from tformer.data.labeled import TaggedSentence
    from tformer.encoder_tokenization import train_encoder_bpe
    from tformer.models.bert import BertModel

    tok = train_encoder_bpe(["the big world says hello", "Hello world , the world is big"] * 50, vocab_size=300)
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32,
                                   max_len=32, pad_id=tok.pad_id))
    words = ["Hello", "world", "is", "big"]
    task = FineTuneTask(finetune_run_defaults("tagging"), encoder, tok,
                        [TaggedSentence(words, ["B-X", "I-X", "O", "O"], 1)])
    item = task.train_set[0]
    assert item["ids"] == tok.encode_batch([" ".join(words)])[0].ids
    assert [tok.id_to_token(i) for i in item["ids"][1:-1]] == ["Hello", "Ġworld", "Ġis", "Ġbig"]
    assert item["labels"] == [-100, task.label_index["B-X"], task.label_index["I-X"], 0, 0, -100]


def test_a_fine_tuned_model_trains_on_at_its_own_task_without_task(tmp_path, pretrained, capsys):
    """finetune --model NER_DIR --train more.txt, as the README says, trains on; without --task it was refused as
    'fine-tuned for tagging, not --task classification: start from the pretrained model instead'."""
    sentence = [f"{w} X {'B-ANI' if w in ANIMALS else 'O'}" for w in ("the", ANIMALS[0], "sat")] + [""]
    run = tagging_run(tmp_path / "ner.txt", sentence * 8, pretrained, epochs=1)
    train(build_finetune_task(run), run.train, tmp_path / "ner", quiet=True)
    code = main(["finetune", "--model", str(tmp_path / "ner"), "--train", str(tmp_path / "ner.txt"),
                 "--out", str(tmp_path / "more"), "train.max_steps=1"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "more" / "config.json").read_text())
    assert saved["tformer_run"]["data"]["task"] == "tagging"
    # Given, --task still has to match the model's
    code = main(["finetune", "--model", str(tmp_path / "ner"), "--train", str(tmp_path / "ner.txt"),
                 "--out", str(tmp_path / "other"), "--task", "classification"])
    assert code == 2 and "fine-tuned for 'tagging', not --task classification" in capsys.readouterr().err


def test_max_tokens_above_the_models_positions_is_cut_with_a_warning(tmp_path, pretrained, capsys):
    """--max-tokens 1000 on a 64-position model was cut to 64 without a word; now it says so, naming both numbers,
    as transformers' run_glue does. The default (128 here) fits the model silently, and evaluate and predict of the
    saved run do not repeat the warning."""
    from conftest import run_cli

    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(16, 0))
    base = ["finetune", "--model", pretrained, "--train", train_file, "train.max_steps=1"]
    code, _, err = run_cli(capsys, *base, "--out", tmp_path / "long", "--max-tokens", "1000")
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("tformer: warning:")]
    assert warned == ["tformer: warning: data.max_tokens=1000 (--max-tokens) is more than the model's 64 positions: "
                      "inputs are cut to 64 tokens"]
    code, _, err = run_cli(capsys, "predict", "--model", tmp_path / "long", "--input", train_file)
    assert code == 0 and "warning" not in err
    for given in ([], ["--max-tokens", "64"], ["--max-tokens", "20"]):  # the default, and values that fit
        code, _, err = run_cli(capsys, *base, "--out", tmp_path / f"fits-{given[-1] if given else 'default'}", *given)
        assert code == 0 and "warning" not in err, err
    run = run_for(tmp_path, pretrained, **{"data.max_tokens": 65})  # from Python alike
    with pytest.warns(UserWarning, match="data.max_tokens=65 .* the model's 64 positions: inputs are cut to 64"):
        task = build_finetune_task(run)
    assert task.max_tokens == 64


def test_a_learning_rate_of_zero_or_below_is_refused(tmp_path, pretrained, capsys):
    """finetune --lr 0 (and a negative rate, and train.lr=0) trained nothing without a word; train.lr=0 for train
    too (the same check). A model saved with lr 0 before still predicts."""
    from conftest import assert_one_line_error, run_cli

    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(16, 0))
    base = ["finetune", "--model", pretrained, "--train", train_file, "--out", tmp_path / "clf", "train.max_steps=1"]
    for option in (["--lr", "0"], ["--lr", "-0.5"], ["--lr=-1e-5"], ["train.lr=0"], ["--lr", "nan"]):
        code, _, err = run_cli(capsys, *base, *option)
        assert_one_line_error(code, err, "train.lr", "out of range (allowed: (0, inf))")
        assert not (tmp_path / "clf").exists()
    code, _, err = run_cli(capsys, *base)
    assert code == 0, err
    saved = json.loads((tmp_path / "clf" / "config.json").read_text())
    saved["tformer_run"]["train"]["lr"] = 0.0
    (tmp_path / "clf" / "config.json").write_text(json.dumps(saved))
    code, out, err = run_cli(capsys, "predict", "--model", tmp_path / "clf", "--input", train_file)
    assert code == 0 and len(out.splitlines()) == 16, err
    code, _, err = run_cli(capsys, "finetune", "--model", pretrained, "--out", tmp_path / "clf", "--resume",
                           "train.max_steps=2")
    assert_one_line_error(code, err, "train.lr: 0.0 is out of range")  # resuming it trains: a rate is needed
    code, _, err = run_cli(capsys, "finetune", "--model", pretrained, "--out", tmp_path / "clf", "--resume",
                           "train.max_steps=2", "--lr", "1e-4")
    assert code == 0, err


def test_empty_data_is_named_not_an_index_error(tmp_path, pretrained):
    """FineTuneTask with no tagging examples raised IndexError (reading the tags of none); classification named
    no data, regression and qa blamed train.accum_steps. Each names the data now, and so does empty validation
    data (its metrics divided by zero)."""
    from tformer.data.labeled import TaggedSentence, TextExample
    from tformer.tasks.finetune import load_pretrained_encoder, task_for_model

    encoder, tok = load_pretrained_encoder(pretrained)
    for kind in ("tagging", "classification", "regression", "qa"):
        with pytest.raises(TformerError, match=f"^train_data: no examples in it; {kind} fine-tuning needs at least "
                                               "one to train on$"):
            FineTuneTask(finetune_run_defaults(kind), encoder, tok, [])
    run = finetune_run_defaults("tagging")
    run.data.train_file = "ner.conll"  # set: the file is named
    with pytest.raises(TformerError, match="^ner.conll: no examples in it"):
        FineTuneTask(run, encoder, tok, [])
    sentences = [TaggedSentence(["the", "cat"], ["O", "B-ANI"], 1)]
    with pytest.raises(TformerError, match="^valid_data: no examples in it; tagging fine-tuning needs at least one "
                                           "to validate on$"):
        FineTuneTask(finetune_run_defaults("tagging"), encoder, tok, sentences, [])
    # A model with no training data is how evaluate and predict build the task: training it names the data.
    rows = [TextExample("a good film", None, "1", 2), TextExample("a bad film", None, "0", 3)]
    task = FineTuneTask(finetune_run_defaults(), encoder, tok, rows)
    again = task_for_model(finetune_run_defaults(), task.model, tok, [])
    with pytest.raises(TformerError, match="^train_data: no examples in it"):
        train(again, replace(again.run.train, max_steps=1), tmp_path / "m", quiet=True)
    assert not (tmp_path / "m").exists()


def test_logistic_regression_needs_two_classes():
    """One example (or examples of one class) gave NaN weights or an overflow inside L-BFGS: the bias, not held by
    the l2 term, grows without end. Refused, as scikit-learn's LogisticRegression does; so are labels outside
    n_classes and mismatched shapes."""
    x = torch.randn(5, 4)
    for labels, needle in ((torch.tensor([1]), "the 1 example(s) are all of class 1"),
                           (torch.tensor([0] * 5), "the 5 example(s) are all of class 0"),
                           (torch.tensor([0, 1, 2, 0, 1]), "labels run from 0 to 2, outside 0 to 1"),
                           (torch.tensor([0, 1]), "features of shape (5, 4) and labels of shape (2,)")):
        features = x[: labels.numel()] if labels.numel() < 2 else x
        with pytest.raises(TformerError, match=re.escape(needle)):
            fit_logistic_regression(features, labels, 2)
    with pytest.raises(TformerError, match=re.escape("no examples (features of shape (0, 4))")):
        fit_logistic_regression(x[:0], torch.tensor([], dtype=torch.long), 2)
    layer = fit_logistic_regression(x[:2], torch.tensor([0, 1]), 2)  # two examples, two classes: a finite fit
    assert torch.isfinite(layer.weight).all() and (layer(x[:2]).argmax(-1) == torch.tensor([0, 1])).all()


def test_unseen_validation_labels_and_tags_are_scored_as_misses(tmp_path, pretrained, capsys):
    """A validation (or `evaluate --data`) label or tag the model was not trained on was a hard error, which stopped
    a run over one row; it is scored as a miss, as sklearn and seqeval score a class never predicted, with one
    warning naming how many and which. Training data cannot have one: the head has no output for it."""
    from tformer import metrics
    from tformer.data.labeled import TaggedSentence

    lines = []
    rng = random.Random(5)
    for _ in range(20):
        words = [rng.choice(FILL) for _ in range(3)] + [rng.choice(ANIMALS)]
        lines += [f"{w} X {'B-ANI' if w in ANIMALS else 'O'}" for w in words] + [""]
    dev = tmp_path / "dev.txt"
    dev.write_text("the X O\ncat X B-ANI\n\nhorse X B-NEW\nsleeps X I-NEW\nin X O\n\ndog X B-NEW\n")
    run = tagging_run(tmp_path / "ner.txt", lines, pretrained, epochs=1)
    run.data.valid_file = str(dev)
    with pytest.warns(UserWarning, match=r"dev.txt: 3 of 6 words have tags the model was not trained on: "
                                         r"'B-NEW' \(2\), 'I-NEW' \(1\); they are scored as misses"):
        task = build_finetune_task(run)
    scores = task.validate(task.model)
    gold = [s.tags for s in task.valid_data]
    pred = [r["tags"] for r in task.predict(task.model, task.valid_data)]
    expected = metrics.entity_prf(pred, gold)
    assert expected["per_type"]["NEW"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert scores["recall"] == pytest.approx(expected["recall"]) and scores["recall"] <= 1 / 3
    right = sum(p == g for ps, gs in zip(pred, gold) for p, g in zip(ps, gs))
    assert scores["tag_accuracy"] == pytest.approx(right / 6) and right <= 3
    # training data with a tag the head has no output for is still an error, at its line
    with pytest.raises(TformerError, match=r"ner.txt:2 was not among the training tags"):
        task.encode([TaggedSentence(["the", "horse"], ["O", "B-NEW"], 1)], "train")

    # classification, with the loss over the examples whose label the model has
    run = run_for(tmp_path, pretrained)
    rows = sentiment_rows(40, 1)
    write_tsv(tmp_path / "valid.tsv", rows[:10] + [("so so", "neutral"), ("meh", "mixed"), ("so so", "neutral")])
    with pytest.warns(UserWarning, match=r"valid.tsv: 3 of 13 examples have labels the model was not trained on: "
                                         r"'neutral' \(2\), 'mixed' \(1\)"):
        task = build_finetune_task(run)
    scores = task.validate(task.model)
    logits = task.predict_logits(task.model.eval(), task.valid_set)
    pred = [task.labels[int(l.argmax())] for l in logits]
    gold = [label for _, label in rows[:10]] + ["neutral", "mixed", "neutral"]
    assert scores["accuracy"] == pytest.approx(metrics.accuracy(pred, gold)) and scores["accuracy"] <= 10 / 13
    assert scores["macro_f1"] == pytest.approx(metrics.macro_f1(pred, gold))  # 'neutral', 'mixed': F1 0
    assert scores["mcc"] == pytest.approx(metrics.matthews_corrcoef(pred, gold))
    want_loss = torch.nn.functional.cross_entropy(torch.stack(logits[:10]), torch.tensor([int(g) for g in gold[:10]]))
    assert scores["loss"] == pytest.approx(float(want_loss), rel=1e-5)
    with pytest.raises(TformerError, match=r"label 'neutral' at .*train.tsv:9 was not among the training labels"):
        task.encode([replace(task.valid_data[10], line=9)], "train")
    # regression has no labels to miss: a score of -1 (the id unseen labels are given) is a score
    scores = write_tsv(tmp_path / "scores.tsv", [("a good film", "-1"), ("a bad film", "2.5")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task = build_finetune_task(run_for(tmp_path, pretrained, task="regression", **{"data.valid_file": scores}))
    assert [x["label"] for x in task.valid_set] == [-1.0, 2.5] and "mse" in task.validate(task.model)


def test_a_text_of_no_tokens_is_refused_at_its_line(tmp_path, pretrained, capsys):
    """A pair's second text that the tokenizer keeps nothing of (a soft hyphen: an empty field is refused when read)
    was encoded as an empty segment B, [CLS] a [SEP] [SEP]; transformers has no one answer (its tokenizer drops a
    text_pair of "" on one pair, keeps the empty segment in a batch), so it is refused as an empty field is, naming
    the file, the line and the column; a first text alike, and so in the input of `predict`."""
    from conftest import assert_one_line_error, run_cli

    rows = [("the cat sleeps", "a cat in the barn", "1"), ("the dog sleeps", "a cow in the barn", "0")] * 3
    pairs = write_tsv(tmp_path / "pairs.tsv", rows + [("the cat sleeps", "\u00ad", "1")], ("first", "second", "y"))
    base = ["finetune", "--model", pretrained, "--out", tmp_path / "clf", "--text-column", "first",
            "--label-column", "y", "--epochs", "1"]
    code, _, err = run_cli(capsys, *base, "--train", pairs, "--pair-column", "second")
    assert_one_line_error(code, err, "pairs.tsv:8: the text in column 'second' gives no tokens")
    write_tsv(pairs, rows + [("\u200b\u00ad", "a cat", "1")], ("first", "second", "y"))
    code, _, err = run_cli(capsys, *base, "--train", pairs, "--pair-column", "second")
    assert_one_line_error(code, err, "pairs.tsv:8: the text in column 'first' gives no tokens")
    assert not (tmp_path / "clf").exists()
    # From Python, a pair of "" (or a missing second text among pairs) is the same empty segment
    write_tsv(pairs, rows, ("first", "second", "y"))
    code, _, err = run_cli(capsys, *base, "--train", pairs, "--pair-column", "second")
    assert code == 0, err
    model, tok = load_finetuned(tmp_path / "clf")
    run = load_config(None, ["data.text_column=first", "data.pair_column=second"], base=finetune_run_defaults())
    task = FineTuneTask(run, model.bert, tok, [], model=model)
    from tformer.data.labeled import TextExample

    for pair in ("", None):
        with pytest.raises(TformerError, match=r"valid:3: the text in column 'second' gives no tokens"):
            task.encode([TextExample("the cat", "a cat", "1", 2), TextExample("the dog", pair, "0", 3)], "valid")
    unlabeled = tmp_path / "new.tsv"
    unlabeled.write_text("first\tsecond\nthe cat sleeps\ta cat\nthe dog\t\u00ad\n")
    code, _, err = run_cli(capsys, "predict", "--model", tmp_path / "clf", "--input", unlabeled)
    assert_one_line_error(code, err, f"{unlabeled}:3: the text in column 'second' gives no tokens")


def test_a_qa_head_refuses_classifier_dropout(tmp_path, pretrained, capsys):
    """A QA head has no dropout (as transformers' BertForQuestionAnswering; tests/test_heads_parity.py): asked for,
    it would be ignored without a word, so it is refused, before any file is read."""
    from conftest import assert_one_line_error, run_cli

    (tmp_path / "sq.json").write_text("{}")  # not read: the options are checked first
    code, _, err = run_cli(capsys, "finetune", "--model", pretrained, "--task", "qa", "--train", tmp_path / "sq.json",
                           "--out", tmp_path / "qa", "model.classifier_dropout=0.2")
    assert_one_line_error(code, err, "model.classifier_dropout=0.2: a QA head has no dropout")
    assert not (tmp_path / "qa").exists()
