"""Language-modelling data and training: text files, blocks, validation, exact resume, learning."""

from __future__ import annotations

import gzip
import random

import numpy as np
import pytest
import torch

from tformer.data.text import BlockSampler, encode_corpus, read_corpus, sequential_blocks, split_train_valid
from tformer.errors import TformerError
from tformer.tasks.language_modeling import LanguageModelingTask, build_lm_task, lm_run_defaults, load_lm
from tformer.tokenization import train_lm_tokenizer
from tformer.training.loop import train

TEXT = "to be or not to be, that is the question.\n" * 40


def lm_run(**train_options):
    run = lm_run_defaults()
    run.model = {"preset": "gpt-micro", "d_model": 32, "n_heads": 2, "n_layers": 1}
    run.data.block_size = 16
    run.train.batch_size = 8
    run.train.max_steps = 40
    run.train.eval_every = 0
    run.train.save_every = 0
    run.train.warmup_steps = 5
    for k, v in train_options.items():
        setattr(run.train, k, v)
    return run


def test_read_corpus_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nstill fine\n\xff\xfe broken\n")
    with pytest.raises(TformerError, match="empty.txt: file is empty"):
        read_corpus([empty])
    with pytest.raises(TformerError, match=r"bad.txt:3: not valid UTF-8"):
        read_corpus([bad])
    with pytest.raises(TformerError, match="missing.txt: file not found"):
        read_corpus([tmp_path / "missing.txt"])
    with pytest.raises(TformerError, match="train_text"):
        read_corpus([])


def test_gzip_and_several_files_join_with_end_of_text(tmp_path):
    a = tmp_path / "a.txt.gz"
    with gzip.open(a, "wt", encoding="utf-8") as f:
        f.write("hello")
    b = tmp_path / "b.txt"
    b.write_text("world")
    texts = read_corpus([a, b])
    assert texts == ["hello", "world"]
    bpe = train_lm_tokenizer(texts * 10, "byte_bpe", 300)
    ids = encode_corpus(texts, bpe).tolist()
    assert bpe.eos_id in ids and bpe.decode(ids[: ids.index(bpe.eos_id)]) == "hello"
    chars = train_lm_tokenizer(texts, "char")
    assert len(encode_corpus(texts, chars)) == 10  # no separator in a character vocabulary


def test_char_tokenizer_round_trips_and_rejects_unseen_characters():
    tok = train_lm_tokenizer([TEXT], "char")
    ids = tok.encode_corpus(TEXT)
    assert tok.vocab_size == len(set(TEXT)) and tok.decode(ids.tolist()) == TEXT
    assert ids.tolist() == tok.encode(TEXT)
    with pytest.raises(TformerError, match="'Z'"):
        tok.encode("Zebra")


def test_blocks_are_contiguous_and_targets_shift_by_one():
    ids = np.arange(100)
    sampler = BlockSampler(ids, block_size=8, batch_size=4)
    batches = sampler.epoch(0, seed=1)
    assert len(batches) == 100 // 32
    x, y = sampler.gather(batches[0])
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], x[:, :-1] + 1)
    assert int(x.max()) < 100 and int(y.max()) <= 99
    assert torch.equal(sampler.epoch(0, 1)[0], batches[0]) and not torch.equal(sampler.epoch(1, 1)[0], batches[0])
    with pytest.raises(TformerError, match="block_size"):
        BlockSampler(np.arange(5), block_size=8, batch_size=1)


def test_validation_blocks_cover_every_token_once():
    x, y = sequential_blocks(np.arange(50), 8)
    assert x.shape == (6, 8) and torch.equal(x.flatten(), torch.arange(48)) and torch.equal(y, x + 1)
    train_ids, valid_ids = split_train_valid(np.arange(100), 0.1)
    assert len(train_ids) == 90 and valid_ids[0] == 90


def test_a_small_text_is_learned(tmp_path):
    run = lm_run(max_steps=250, lr=3e-3)
    task = LanguageModelingTask(run, [TEXT])
    before = task.validate(task.model.eval())["loss"]
    task.model.train()
    state = train(task, run.train, tmp_path / "lm", quiet=True)
    assert before > 2.5 and state.last_valid["loss"] < 0.6, (before, state.last_valid)
    model, tok = load_lm(tmp_path / "lm")
    ids = torch.tensor([tok.encode("to be or not to")])
    assert tok.decode([int(model(ids).logits[0, -1].argmax())]) == " "


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dropout, quiet", [(0.0, True), (0.1, False)])
def test_stopped_and_resumed_equals_uninterrupted(tmp_path, dropout, quiet):
    """With dropout every random draw counts: the MFU measurement a shown run makes at its start must not take
    any from the generator the run resumes."""
    def run_to(steps):
        run = lm_run(max_steps=steps)
        run.model.update(dropout=dropout, attention_dropout=dropout)
        return run

    whole = LanguageModelingTask(run_to(12), [TEXT])
    train(whole, whole.run.train, tmp_path / "whole", quiet=quiet)

    first = LanguageModelingTask(run_to(5), [TEXT])
    train(first, first.run.train, tmp_path / "split", quiet=quiet)
    run = run_to(12)
    text_file = tmp_path / "t.txt"
    text_file.write_text(TEXT)
    run.data.train_text = str(text_file)
    resumed = build_lm_task(run, tmp_path / "split")
    train(resumed, run.train, tmp_path / "split", resume=True, quiet=quiet)
    a, b = _params(whole.model), _params(resumed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_bad_options_are_one_line_errors():
    run = lm_run()
    run.data.block_size = 64  # larger than gpt-micro's window once max_len is fixed
    run.model["max_len"] = 32
    with pytest.raises(TformerError, match="window"):
        LanguageModelingTask(run, [TEXT])
    run = lm_run(batch_size=0)
    with pytest.raises(TformerError, match="batch_size"):
        LanguageModelingTask(run, [TEXT])
    run = lm_run()
    run.data.block_size = 10_000
    with pytest.raises(TformerError, match="fewer than data.block_size"):
        LanguageModelingTask(run, [TEXT])


def test_gpt2_tokenizer_files_load_and_train_a_model(tmp_path):
    """A GPT-2 style tokenizer given as vocab.json + merges.txt, or as tokenizer.json, encodes alike."""
    from tformer.tokenization import load_gpt2_tokenizer

    bpe = train_lm_tokenizer([TEXT * 5], "byte_bpe", 300)
    folder = tmp_path / "gpt2-tok"
    folder.mkdir()
    bpe.backend.model.save(str(folder))  # vocab.json + merges.txt, as GPT-2 ships them
    from_files = load_gpt2_tokenizer(folder)
    bpe.save(tmp_path / "tokenizer.json")
    from_json = load_gpt2_tokenizer(tmp_path / "tokenizer.json")
    sample = "to be, or not: that is the question?"
    assert from_files.encode(sample) == from_json.encode(sample) == bpe.encode(sample)
    assert from_files.decode(from_files.encode(sample)) == sample
    # <|endoftext|> in a text is the one special token, as transformers reads the same files (it was 13 bytes).
    from transformers import GPT2TokenizerFast

    documents = "to be<|endoftext|>or not"
    ids = from_files.encode(documents)
    assert ids == from_json.encode(documents) == GPT2TokenizerFast.from_pretrained(str(folder)).encode(documents)
    assert ids.count(from_files.eos_id) == 1
    run = lm_run(max_steps=2)
    run.data.tokenizer_file = str(folder)
    task = LanguageModelingTask(run, [TEXT])
    assert task.model.config.vocab_size == from_files.vocab_size
    with pytest.raises(TformerError, match="vocab.json"):
        load_gpt2_tokenizer(tmp_path / "nothing-here")


def test_more_accumulation_steps_than_batches_in_an_epoch_is_refused_not_an_endless_loop(tmp_path):
    """With accum_steps above an epoch's micro-batches no optimiser step ever fit: the run spun through empty
    epochs forever (limited by steps), or saved an untrained model (limited by epochs)."""
    task = LanguageModelingTask(lm_run(), [TEXT])
    n = len(task.train_batches(0, 1))
    for limits in ({"max_steps": 3}, {"max_steps": 0, "max_epochs": 1, "schedule": "constant"}):
        run = lm_run(accum_steps=n + 1, **limits)
        with pytest.raises(TformerError, match=rf"train.accum_steps={n + 1} is more than the {n} micro-batches"):
            train(LanguageModelingTask(run, [TEXT]), run.train, tmp_path / "out", quiet=True)
        assert not (tmp_path / "out" / "model.safetensors").exists()


def test_every_warming_schedule_rises_by_the_same_steps():
    """cosine reached its peak one step before linear and constant (it read the 1-based step as 0-based)."""
    from tformer.config import TrainConfig
    from tformer.training.loop import learning_rate

    for schedule in ("cosine", "linear", "constant"):
        cfg = TrainConfig(schedule=schedule, lr=1.0, warmup_steps=4, max_steps=100)
        assert [learning_rate(cfg, s, 64) for s in range(1, 5)] == pytest.approx([0.25, 0.5, 0.75, 1.0]), schedule


def test_a_byte_level_corpus_encodes_as_one_text_across_its_chunks():
    """The corpus is encoded in chunks of lines; a run of blank lines across a cut was split into other tokens."""
    bpe = train_lm_tokenizer(["    indented code\n\n\n\n  more\n\tx\n" * 200], "byte_bpe", 400)
    for corpus in ("a\n" * 255 + "\n" + "  x\n", ("word\n" * 300 + "\n\n\n   indented\n") * 3,
                   "para one\nline two\n\n" * 300, "a windows line\r\n" * 600, "trailing spaces \n" * 600):
        assert encode_corpus([corpus], bpe).tolist() == bpe.encode(corpus)
    # A random mix of the whitespace GPT-2's pre-tokenizer treats apart, cut wherever a chunk may end.
    rng = random.Random(0)
    pieces = ["word", " word", "\n", "\n\n", "\r\n", " \n", "  \n", "\u2028\n", "\t", "  ", "x\n"]
    for _ in range(30):
        corpus = "".join(rng.choice(pieces) for _ in range(2000))
        assert encode_corpus([corpus], bpe).tolist() == bpe.encode(corpus)


def test_a_run_without_a_validation_loss_or_a_peak_rate_says_so(tmp_path):
    """A one-token validation split was skipped without a word; a warmup as long as the run never reached lr."""
    run = lm_run()
    run.data.valid_fraction = 0.001
    with pytest.warns(UserWarning, match=r"data.valid_fraction=0.001 of the text: 0 token\(s\), too few"):
        task = LanguageModelingTask(run, [TEXT[:400]])
    assert task.validate(task.model) == {}
    with pytest.warns(UserWarning, match=r"short.txt: 1 token\(s\), too few to validate on"):
        LanguageModelingTask(lm_run(), [TEXT], ["t"], valid_names=["short.txt"])
    run = lm_run(max_steps=3, warmup_steps=5)
    with pytest.warns(UserWarning, match=r"train.warmup_steps=5 is not below the run's 3 steps"):
        train(LanguageModelingTask(run, [TEXT]), run.train, tmp_path / "out", quiet=True)
    run = lm_run(max_steps=3, warmup_steps=2, warmup_ratio=0.5)  # the LM default warmup_steps hides a ratio
    with pytest.warns(UserWarning, match=r"train.warmup_ratio=0.5 is not used: train.warmup_steps=2 is set"):
        train(LanguageModelingTask(run, [TEXT]), run.train, tmp_path / "out2", quiet=True)


def test_model_options_the_tokenizer_decides_are_refused_when_they_differ():
    """model.vocab_size and model.eos_id were replaced by the tokenizer's without a word."""
    run = lm_run()
    tok = train_lm_tokenizer([TEXT], "char")
    run.model["vocab_size"] = 10
    with pytest.raises(TformerError, match=rf"model.vocab_size=10: a language model takes it from its tokenizer "
                                           rf".* \({tok.vocab_size} here\)"):
        LanguageModelingTask(run, [TEXT])
    run.model["vocab_size"] = tok.vocab_size  # the same value: nothing to refuse
    assert LanguageModelingTask(run, [TEXT]).model.config.vocab_size == tok.vocab_size


def test_early_stopping_watches_the_validation_loss(tmp_path):
    """Language models, translation and masked LM stop on their validation loss (train.early_stopping did nothing
    for them: they named no score to watch)."""
    from tformer.tasks.masked_lm import MaskedLMTask
    from tformer.tasks.translation import TranslationTask

    assert LanguageModelingTask.selection_metric == TranslationTask.selection_metric == ("loss", "min")
    assert MaskedLMTask.selection_metric == ("mlm_loss", "min")
    # A rate too small to move a float32 weight (0 itself is refused): no improvement after the first validation.
    run = lm_run(max_steps=40, lr=1e-30, min_lr=0.0, eval_every=2, early_stopping=2)
    state = train(LanguageModelingTask(run, [TEXT]), run.train, tmp_path / "lm", quiet=True)
    assert state.step == 6 and state.early_stopping["best_step"] == 2


def test_a_minimum_rate_above_the_peak_is_refused(tmp_path):
    """The LM default min_lr=1e-4 under a lower train.lr made the cosine schedule climb while it 'decayed'."""
    run = lm_run(lr=5e-5)
    with pytest.raises(TformerError, match=r"train.min_lr=0.0001 is above train.lr=5e-05: the cosine schedule"):
        train(LanguageModelingTask(run, [TEXT]), run.train, tmp_path / "lm", quiet=True)
    assert not (tmp_path / "lm").exists()
