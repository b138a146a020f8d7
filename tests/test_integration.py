"""End to end on tiny data: learning, exact resume, cached decoding, beam search, multi-process training."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import copy_pairs, tiny_run
from tformer.errors import TformerError
from tformer.generation.search import beam_search, greedy_decode
from tformer.tasks.translation import TranslationTask, load_translator, translate_lines
from tformer.training import checkpoint, distributed
from tformer.training.loop import train


def test_tiny_corpus_is_learned_to_exact_copies(tmp_path):
    pairs = copy_pairs(300, seed=1, vocab="abcd", max_words=3)
    run = tiny_run(max_steps=600, lr=0.5, warmup_steps=50, label_smoothing=0.0)
    run.model.update({"d_model": 64, "d_ff": 128, "n_heads": 4, "n_encoder_layers": 2, "n_decoder_layers": 2,
                      "dropout": 0.0})
    run.train.max_tokens = 512
    task = TranslationTask(run, pairs)
    train(task, run.train, tmp_path / "m", quiet=True)
    sources = [s for s, _ in pairs[:60]]
    out = translate_lines(task.model, task.src_tok, task.tgt_tok, sources)
    correct = sum(o == s for o, s in zip(out, sources))
    assert correct >= 57, (correct, list(zip(sources, out))[:5])
    # The saved directory reloads to the same model.
    model, src_tok, tgt_tok = load_translator(tmp_path / "m")
    assert translate_lines(model, src_tok, tgt_tok, sources[:10]) == out[:10]
    # An empty or blank line has nothing to translate: it comes back empty, in its place.
    assert translate_lines(model, src_tok, tgt_tok, ["", sources[0], "   ", sources[1]]) == ["", out[0], "", out[1]]
    assert translate_lines(model, src_tok, tgt_tok, ["", " "]) == ["", ""]
    for lines, beam, needle in ((sources[0], 1, "lines must be a list of strings"), (sources[:1], 0, "beam size")):
        with pytest.raises(TformerError, match=needle):
            translate_lines(model, src_tok, tgt_tok, lines, beam_size=beam)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_equals_uninterrupted(tmp_path):
    pairs = copy_pairs(120, seed=2)
    run = tiny_run(max_steps=12, accum_steps=2)

    whole = TranslationTask(run, pairs)
    train(whole, run.train, tmp_path / "whole", quiet=True)

    first = TranslationTask(run, pairs)
    run.train.max_steps = 5
    state = train(first, run.train, tmp_path / "split", quiet=True)
    assert state.step == 5
    # A fresh process would rebuild everything from the directory: do the same.
    model, src_tok, tgt_tok = load_translator(tmp_path / "split")
    model.train()
    run.train.max_steps = 12
    resumed = TranslationTask(run, pairs, src_tok=src_tok, tgt_tok=tgt_tok, model=model)
    state = train(resumed, run.train, tmp_path / "split", resume=True, quiet=True)
    assert state.step == 12
    a, b = _params(whole.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_directory_layout_and_atomic_replace(tmp_path):
    pairs = copy_pairs(40, seed=3)
    run = tiny_run(max_steps=2)
    task = TranslationTask(run, pairs)
    train(task, run.train, tmp_path / "m", quiet=True)
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.json", "optimizer.pt"} <= names
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    class Boom(RuntimeError):
        pass

    def failing_write(tmp):
        (tmp / "config.json").write_text("{}")
        raise Boom()

    with pytest.raises(Boom):
        checkpoint.save_dir(tmp_path / "m", failing_write)
    # The earlier checkpoint is intact and no temporary folder is left behind.
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.fixture(scope="module")
def trained_copy_model(tmp_path_factory):
    pairs = copy_pairs(200, seed=4)
    run = tiny_run(max_steps=200, lr=0.5, label_smoothing=0.0)
    run.model.update({"d_model": 48, "d_ff": 96, "n_heads": 4, "dropout": 0.0})
    task = TranslationTask(run, pairs)
    train(task, run.train, tmp_path_factory.mktemp("m") / "m", quiet=True)
    task.model.eval()
    return task, pairs


def _batch(task, sources):
    from tformer.data.batching import pad

    return pad([task.src_tok.encode(s) for s in sources], task.model.config.pad_id)


def test_cached_and_uncached_greedy_are_identical(trained_copy_model):
    task, pairs = trained_copy_model
    src = _batch(task, [s for s, _ in pairs[:24]])
    cached = greedy_decode(task.model, src, max_len=30, use_cache=True)
    uncached = greedy_decode(task.model, src, max_len=30, use_cache=False)
    assert cached == uncached
    assert any(len(c) > 3 for c in cached)


def test_cached_step_logits_match_full_forward(trained_copy_model):
    task, pairs = trained_copy_model
    model = task.model
    src = _batch(task, [s for s, _ in pairs[:4]])
    tgt = torch.randint(4, model.config.tgt_vocab_size, (4, 9))
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        full = model.decode(tgt, memory, src_mask)
        cache = model.new_cache()
        steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache) for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_beam_one_equals_greedy(trained_copy_model):
    task, pairs = trained_copy_model
    src = _batch(task, [s for s, _ in pairs[:24]])
    greedy = greedy_decode(task.model, src, max_len=30)
    beam = [h[0].tokens for h in beam_search(task.model, src, beam_size=1, max_len=30)]
    assert beam == greedy


def test_beam_search_finds_at_least_greedys_score(trained_copy_model):
    task, pairs = trained_copy_model
    src = _batch(task, [s for s, _ in pairs[:16]])
    results = beam_search(task.model, src, beam_size=4, max_len=30, length_penalty=0.0, n_best=4)
    greedy = greedy_decode(task.model, src, max_len=30)
    for row, hyps in enumerate(results):
        assert 1 <= len(hyps) <= 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        # Score greedy's output under the model: beam search (no length penalty) must not do worse.
        ids = greedy[row] + [task.model.config.eos_id]
        tgt_in = torch.tensor([[task.model.config.bos_id] + ids[:-1]])
        with torch.no_grad():
            memory, mask = task.model.encode(src[row : row + 1])
            lp = torch.log_softmax(task.model.decode(tgt_in, memory, mask), -1)[0]
        greedy_score = float(lp[torch.arange(len(ids)), torch.tensor(ids)].sum())
        assert hyps[0].score >= greedy_score - 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, pairs, result_dir: str):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    run = tiny_run(max_steps=6, accum_steps=2, device="cpu")
    info = distributed.setup("cpu")
    try:
        task = TranslationTask(run, pairs)
        train(task, run.train, out, info=info, quiet=True)
        torch.save({k: v for k, v in task.model.state_dict().items()}, Path(result_dir) / f"rank{rank}.pt")
    finally:
        distributed.teardown(info)


def test_two_process_ddp_training_keeps_ranks_identical(tmp_path):
    pairs = copy_pairs(120, seed=5)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "m"), pairs, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # The ranks trained (weights moved away from a fresh initialisation) and rank 0 wrote the checkpoint.
    fresh = TranslationTask(tiny_run(), pairs).model.state_dict()
    assert any(not torch.equal(r0[k], fresh[k]) for k in r0)
    assert (tmp_path / "m" / "model.safetensors").is_file()



def _no_dropout_run(accum_steps: int):
    run = tiny_run(max_steps=4, accum_steps=accum_steps, device="cpu", clip_norm=0.0, log_every=2)
    run.model["dropout"] = 0.0
    return run


def _ddp_equals_one_process_worker(rank: int, port: int, out: str, pairs):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = distributed.setup("cpu")
    try:
        run = _no_dropout_run(1)
        task = TranslationTask(run, pairs)
        state = train(task, run.train, Path(out) / "m", info=info, quiet=True)
        # Every rank's own record of the logged losses (rank 0 also writes them to trainer_state.json).
        (Path(out) / f"history{rank}.json").write_text(json.dumps(state.history))
        if rank == 0:
            torch.save({"tokens": torch.tensor(state.tokens), **task.model.state_dict()}, Path(out) / "ddp.pt")
    finally:
        distributed.teardown(info)


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    """Rank r takes batches r, r + 2, ...: one process accumulating 2 batches per step sees the same ones. The
    ranks' batches hold different numbers of target tokens, and the step's loss is the mean over all of them
    (each rank divided by its own count once, weighting a token of a small batch more)."""
    pairs = copy_pairs(120, seed=5)
    mp.spawn(_ddp_equals_one_process_worker, args=(_free_port(), str(tmp_path), pairs), nprocs=2, join=True)
    run = _no_dropout_run(2)
    single = TranslationTask(run, pairs)
    batches = single.train_batches(0, run.train.seed)
    counts = [single.count_tokens(single.collate(b, torch.device("cpu"))) for b in batches]
    assert counts[0::2] != counts[1::2]  # the ranks' token counts differ: the case that went wrong
    state = train(single, run.train, tmp_path / "single", quiet=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert int(ddp.pop("tokens")) == state.tokens  # every process's tokens, not rank 0's alone
    for name, tensor in single.model.state_dict().items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    # The logged training loss is over both processes' tokens, as the one process's is over the same batches: it
    # was rank 0's own loss over its own tokens (and rank 1 logged another).
    logged = [[h["loss"] for h in json.loads((tmp_path / f"history{r}.json").read_text()) if "loss" in h]
              for r in range(2)]
    written = [h["loss"] for h in json.loads((tmp_path / "m" / "trainer_state.json").read_text())["trainer"]["history"]
               if "loss" in h]
    expected = [h["loss"] for h in state.history if "loss" in h]
    assert len(expected) == 2 and logged[0] == logged[1] == written
    assert logged[0] == pytest.approx(expected, rel=1e-6)

class _ScriptedValidation(TranslationTask):
    """Validation losses that improve twice, then get worse: early stopping ends the run at step 3."""

    selection_metric = ("loss", "min")
    scripted = [3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0, 3.1, 3.2]

    def validate(self, model):
        self.calls = getattr(self, "calls", 0) + 1
        return {"loss": self.scripted[self.calls - 1]}


class _InfiniteOnRank1(TranslationTask):
    """Rank 1's loss becomes inf on its 5th micro-batch (step 3's first, with accum_steps=2); rank 0's stays finite.
    An added constant: the gradients stay finite, as those of a cross-entropy over a -inf logit do."""

    def loss(self, model, batch):
        self.calls = getattr(self, "calls", 0) + 1
        loss, stats = super().loss(model, batch)
        if distributed.launched().rank == 1 and self.calls == 5:
            loss = loss + float("inf")
        return loss, stats


_TASKS = {"translation": TranslationTask, "scripted": _ScriptedValidation, "inf_on_rank1": _InfiniteOnRank1}


def _ddp_phases_worker(rank: int, world: int, port: int, out: str, pairs, result: str, phases: list, task_kind: str):
    """Train in `world` processes through each (train options, resume) phase; rank r writes result/rank{r}.pt, or
    result/rank{r}.error with the message of a TformerError that stopped it."""
    import time

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = distributed.setup("cpu")
    try:
        for options, resume in phases:
            run = tiny_run(device="cpu", **options)
            task = _TASKS[task_kind](run, pairs)
            if rank == 1:
                time.sleep(0.5)  # the ranks' clocks start apart, as when only rank 0 measures the matmul peak
            state = train(task, run.train, out, resume=resume, info=info, quiet=True)
        torch.save({"step": state.step, **task.model.state_dict()}, Path(result) / f"rank{rank}.pt")
    except TformerError as exc:
        (Path(result) / f"rank{rank}.error").write_text(str(exc))
        distributed.teardown(info)
    else:
        distributed.teardown(info, finished=True)


def _run_phases(tmp_path, name: str, phases: list, task_kind: str = "translation", timeout: float = 240.0) -> Path:
    """Run the phases in 2 processes; the folder of their results. A rank left waiting for the other fails the
    test instead of hanging it."""
    result = tmp_path / f"{name}-result"
    result.mkdir()
    context = mp.spawn(_ddp_phases_worker, args=(2, _free_port(), str(tmp_path / name), copy_pairs(120, seed=5),
                                                 str(result), phases, task_kind), nprocs=2, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{name}: the processes did not finish in {timeout:.0f} s (one waits for the other)")
    return result


def _spawn_phases(tmp_path, name: str, phases: list, task_kind: str = "translation", timeout: float = 240.0):
    """Each rank's final weights (and step) of a 2-process run."""
    result = _run_phases(tmp_path, name, phases, task_kind, timeout)
    return [torch.load(result / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_process_resume_equals_uninterrupted_with_dropout(tmp_path):
    """Each rank draws its own dropout masks (seeded seed + rank): each must get its own random state back."""
    whole = _spawn_phases(tmp_path, "whole", [({"max_steps": 6, "accum_steps": 2}, False)])
    split = _spawn_phases(tmp_path, "split", [({"max_steps": 3, "accum_steps": 2}, False),
                                              ({"max_steps": 6, "accum_steps": 2}, True)])
    assert whole[0].pop("step") == split[0].pop("step") == 6
    for k in whole[0]:
        assert torch.equal(whole[0][k], whole[1][k]), k
        assert torch.equal(whole[0][k], split[0][k]), k


def _first_batches(task, monkeypatch) -> list:
    """The micro-batches (lists of example indices) `task` collates from now on, in order."""
    seen = []
    collate = task.collate

    def recording(batch, device):
        seen.append(list(batch))
        return collate(batch, device)

    monkeypatch.setattr(task, "collate", recording)
    return seen


def test_a_run_saved_by_two_processes_resumes_on_one_only_when_allowed(tmp_path, monkeypatch):
    """A process's batch_index counts its own share: resumed on one process, the saved run's step 2 (4 batches of
    the epoch used by the two) went on from batch 2, training batches 2 and 3 again. It is refused unless allowed,
    and then goes on from batch 4."""
    pairs = copy_pairs(120, seed=5)
    _spawn_phases(tmp_path, "two", [({"max_steps": 2}, False)])
    out = tmp_path / "two"
    saved = (out / "trainer_state.json").read_text()
    assert json.loads(saved)["trainer"]["world_size"] == 2
    run = tiny_run(max_steps=3, device="cpu")
    task = TranslationTask(run, pairs)
    refused = (r"two: the run was saved by 2 processes and is resumed on 1; .*it on 2 "
               r"\(torchrun --nproc_per_node 2\), or set train.allow_world_size_change=true")
    with pytest.raises(TformerError, match=refused):
        train(task, run.train, out, resume=True, quiet=True)
    assert (out / "trainer_state.json").read_text() == saved  # nothing changed
    # A checkpoint saved before the trainer state held world_size: its two processes' random states tell.
    older = json.loads(saved)
    del older["trainer"]["world_size"]
    (out / "trainer_state.json").write_text(json.dumps(older))
    with pytest.raises(TformerError, match=refused):
        train(task, run.train, out, resume=True, quiet=True)
    run.train.allow_world_size_change = True
    seen = _first_batches(task, monkeypatch)
    with pytest.warns(UserWarning, match=r"saved by 2 processes on 1: a step takes 1 x 1 micro-batches .*it took "
                                         r"2 x 1\), and epoch 0 goes on from its batch 4"):
        state = train(task, run.train, out, resume=True, quiet=True)
    assert state.step == 3 and seen == [task.train_batches(0, run.train.seed)[4]]
    assert json.loads((out / "trainer_state.json").read_text())["trainer"]["world_size"] == 1


def test_a_run_saved_by_one_process_resumes_on_two_when_allowed(tmp_path):
    """The other way: refused (before any process waits for another), and when allowed both processes go on in
    step from the saved weights."""
    pairs = copy_pairs(120, seed=5)
    run = tiny_run(max_steps=3, device="cpu")
    train(TranslationTask(run, pairs), run.train, tmp_path / "one", quiet=True)
    with pytest.raises(TformerError, match=r"saved by 1 process and is resumed on 2; .*resume it in one process"):
        train(TranslationTask(run, pairs), run.train, tmp_path / "one", resume=True, quiet=True,
              info=distributed.DistInfo(rank=0, world_size=2))
    ranks = _spawn_phases(tmp_path, "one", [({"max_steps": 5, "allow_world_size_change": True}, True)])
    assert ranks[0].pop("step") == ranks[1].pop("step") == 5
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k


def test_two_processes_stop_together_on_time_and_on_early_stopping(tmp_path):
    """Only rank 0 validates and the ranks' clocks differ: both must still stop at the same step."""
    timed = _spawn_phases(tmp_path, "timed", [({"max_steps": 0, "max_minutes": 0.02}, False)])
    assert timed[0]["step"] == timed[1]["step"] > 0
    stopped = _spawn_phases(tmp_path, "early", [({"max_steps": 10, "eval_every": 1, "early_stopping": 1}, False)],
                            task_kind="scripted")
    assert stopped[0]["step"] == stopped[1]["step"] == 3


def test_non_finite_loss_stops_without_overwriting_the_checkpoint(tmp_path):
    from tformer.errors import TformerError

    pairs = copy_pairs(40, seed=6)
    run = tiny_run(max_steps=2)
    task = TranslationTask(run, pairs)
    train(task, run.train, tmp_path / "m", quiet=True)
    saved = (tmp_path / "m" / "model.safetensors").read_bytes()

    real_loss = task.loss

    def nan_loss(model, batch):
        loss, stats = real_loss(model, batch)
        return loss * float("nan"), stats

    task.loss = nan_loss
    run.train.max_steps = 4
    with pytest.raises(TformerError, match="nan at step 3"):
        train(task, run.train, tmp_path / "m", resume=True, quiet=True)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == saved


def test_a_non_finite_loss_on_one_process_stops_every_process_with_the_same_error(tmp_path):
    """Rank 1's loss alone goes to inf at step 3. Each rank checked only its own loss: rank 1 stopped, and rank 0
    stepped on the inf gradients DDP had averaged in and went on into its next collective, to wait for a process
    that had left (NCCL: a hang; gloo here: a RuntimeError on the closed connection). Both must stop at step 3 with
    the same line, the checkpoint of step 2 untouched."""
    result = _run_phases(tmp_path, "inf", [({"max_steps": 6, "accum_steps": 2, "save_every": 2}, False)],
                         task_kind="inf_on_rank1", timeout=120)
    errors = [(result / f"rank{r}.error").read_text() if (result / f"rank{r}.error").is_file() else None
              for r in range(2)]
    assert errors[0] is not None and errors[0] == errors[1], errors
    assert errors[0].startswith("training loss or gradients became non-finite on one of the 2 processes "
                                "(gradient norm nan) at step 3; the last checkpoint in "), errors[0]
    saved = json.loads((tmp_path / "inf" / "trainer_state.json").read_text())
    assert saved["trainer"]["step"] == 2
    weights = checkpoint.read_weights(tmp_path / "inf" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.parametrize("clip_norm", [1.0, 0.0])
def test_non_finite_gradients_of_a_finite_loss_stop_before_the_update(tmp_path, clip_norm):
    """sqrt's slope at 0 is inf: the loss below stays finite and the gradients become NaN. The step wrote NaN into
    the weights and the checkpoint after it saved them; the run went on to stop on the loss one step later."""
    pairs = copy_pairs(40, seed=6)
    run = tiny_run(max_steps=2, clip_norm=clip_norm, save_every=1)
    task = TranslationTask(run, pairs)
    train(task, run.train, tmp_path / "m", quiet=True)
    saved = (tmp_path / "m" / "model.safetensors").read_bytes()

    real_loss = task.loss

    def nan_gradients(model, batch):
        loss, stats = real_loss(model, batch)
        weight = next(model.parameters())
        return loss + torch.sqrt(weight.sum() * 0), stats

    task.loss = nan_gradients
    run.train.max_steps = 4
    with pytest.raises(TformerError, match=r"^training gradients became non-finite \(norm nan\) at step 3; the last "
                                           "checkpoint in .* is kept"):
        train(task, run.train, tmp_path / "m", resume=True, quiet=True)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == saved


def test_resume_at_the_step_limit_trains_no_further(tmp_path):
    pairs = copy_pairs(40, seed=6)
    run = tiny_run(max_steps=3)
    task = TranslationTask(run, pairs)
    train(task, run.train, tmp_path / "m", quiet=True)
    before = _params(task.model)
    state = train(task, run.train, tmp_path / "m", resume=True, quiet=True)
    assert state.step == 3
    after = _params(task.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_beam_search_takes_any_beam_up_to_the_vocabulary():
    """2K candidates per beam cannot exceed a vocabulary of V < 2K tokens: every token is then a candidate."""
    from tformer.registry import create_model

    torch.manual_seed(0)
    model = create_model("transformer-micro", src_vocab_size=12, tgt_vocab_size=9).eval()
    src = torch.randint(4, 12, (2, 5))
    for beam in (4, 5, 8, 9):  # 2K > 9 from 5 on
        results = beam_search(model, src, beam_size=beam, max_len=6, n_best=beam)
        assert len(results) == 2 and all(1 <= len(h) <= beam for h in results)
        assert all([x.score for x in h] == sorted((x.score for x in h), reverse=True) for h in results)
    assert [h[0].tokens for h in beam_search(model, src, beam_size=1, max_len=6)] == greedy_decode(model, src, max_len=6)


def test_training_pairs_left_out_are_counted():
    from tformer.config import load_config

    run = load_config(None, ["data.max_len=6", "data.vocab_size=60", "model.preset=transformer-micro"])
    pairs = [("a b c", "x y"), ("a b c d e f g h", "x"), ("", "x"), ("a", "y z")] * 5
    with pytest.warns(UserWarning, match="10 of 20 training pairs left out.*data.max_len=6"):
        task = TranslationTask(run, pairs)
    assert len(task.examples) == 10


def test_blank_lines_stay_blank_whatever_the_tokenizer_makes_of_them(monkeypatch):
    """A space can be a token (the word-start symbol): blank lines were translated into junk by a real model."""
    import tformer.tasks.translation as translation

    task = TranslationTask(tiny_run(), copy_pairs(60))
    assert task.src_tok.encode(" ")  # not empty in tokens: only the text says the line is blank
    word = task.tgt_tok.encode("abc")
    # A model that always says "abc", so that any line sent to it shows.
    monkeypatch.setattr(translation, "translate_ids", lambda model, src, *args: [word] * src.size(0))
    out = translate_lines(task.model, task.src_tok, task.tgt_tok, ["", " ", "\t", "x", "   "], beam_size=2)
    assert out == ["", "", "", "abc", ""]


def test_translation_model_options_that_would_be_replaced_or_overrun_are_refused():
    """model.pad_id, the vocabulary sizes and share_embeddings without a joint vocabulary were replaced silently;
    data.max_len beyond the model's positions failed mid-run (learned) or cut every long sentence later."""
    for options, needle in (({"pad_id": 5}, r"model.pad_id=5: a translation model takes it from its tokenizers"),
                            ({"src_vocab_size": 10}, r"model.src_vocab_size=10"),
                            ({"max_len": 16}, r"data.max_len=64 is more than the model's 16 positions")):
        run = tiny_run()
        run.model.update(options)
        with pytest.raises(TformerError, match=needle):
            TranslationTask(run, copy_pairs(30))
    run = tiny_run()
    run.data.tokenizer_file = "gpt2/tokenizer.json"  # --tokenizer-file on a translation preset was ignored
    with pytest.raises(TformerError, match="data.tokenizer_file='gpt2/tokenizer.json' is for GPT language models"):
        TranslationTask(run, copy_pairs(30))
    run = tiny_run()
    run.data.joint_vocab = False
    run.model["share_embeddings"] = True
    with pytest.raises(TformerError, match="model.share_embeddings=true needs one vocabulary.*data.joint_vocab=true"):
        TranslationTask(run, copy_pairs(30))


def test_a_translation_directory_with_another_models_tokenizer_is_refused(tmp_path):
    """A swapped tokenizer.json translated into garbage with exit code 0."""
    from tformer.tokenization import train_tokenizer

    run = tiny_run(max_steps=1)
    task = TranslationTask(run, copy_pairs(60))
    train(task, run.train, tmp_path / "m", quiet=True)
    load_translator(tmp_path / "m")  # its own tokenizer: fine
    other = train_tokenizer(["completely different words here"] * 20, 40, "bpe")
    assert other.vocab_size != task.src_tok.vocab_size
    other.save(tmp_path / "m" / "tokenizer.json")
    with pytest.raises(TformerError, match=rf"tokenizer.json: {other.vocab_size} tokens, but the model was trained "
                                           rf"with {task.src_tok.vocab_size}"):
        load_translator(tmp_path / "m")
