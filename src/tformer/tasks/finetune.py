"""Fine-tuning a pretrained encoder: sentence (pair) classification and regression, token tagging, extractive QA.

The job, end to end: read labelled files (tformer.data.labeled, tformer.data.squad), tokenize with the
pretrained model's own tokenizer, put a new head on its encoder (tformer.models.heads.EncoderForTask), and
train with the trainer, the transfer strategies (tformer.transfer) chosen by options:
    train.strategy=feature_extraction   the encoder frozen, only the head trains (see also `fit_logistic_regression`)
    train.freeze_layers=N                the embeddings and the lowest N layers frozen
    train.encoder_lr_scale=0.1           pretrained weights learn 10x slower than the new head
    train.layer_decay=0.38               discriminative rates, each layer 1/2.6 of the one above (ULMFiT)
    train.schedule=slanted_triangular    ULMFiT's schedule
    train.gradual_unfreezing=true        epoch e trains the head and the top e + 1 layers
    train.early_stopping=P               stop after P validations without improvement, keep the best
A pretrained GPT instead of an encoder gives sentence (pair) classification with GPT-1's head and auxiliary
language-modelling loss (tformer.tasks.finetune_gpt); the strategies apply to its layers alike.
Validation reports the task's metrics: accuracy, macro-F1 and Matthews correlation (classification),
Pearson/Spearman (regression), entity precision/recall/F1 (tagging), exact match and F1 (QA).
"""

from __future__ import annotations

import math
import random
import warnings
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tformer.config import RunConfig, TrainConfig, check_section
from tformer.encoder_tokenization import EncoderTokenizer
from tformer.errors import TformerError
from tformer.models.bert import BertConfig, BertForPreTraining, BertModel
from tformer.models.gpt import GPTConfig
from tformer.models.heads import EncoderForTask, HeadConfig
from tformer.tasks.masked_lm import ENCODER_MODEL_TYPES
from tformer.training import checkpoint
from tformer.training.distributed import launched

# BERT's fine-tuning recipe (Devlin et al. 2019, appendix A.3): AdamW, lr 2e-5..5e-5 (higher for small
# models), warmup 10% then linear decay, batch 32, 2-4 epochs, dropout 0.1.
FINETUNE_TRAIN_DEFAULTS = dict(schedule="linear", lr=5e-5, min_lr=0.0, warmup_steps=0, warmup_ratio=0.1,
                               adam_beta2=0.999, adam_eps=1e-8, weight_decay=0.01, clip_norm=1.0, label_smoothing=0.0, batch_size=32,
                               max_epochs=3, max_steps=0, eval_every=0, log_every=50)
QA_MAX_TOKENS = 384
GPT_MODEL_TYPES = ("gpt", "gpt2")  # pretrained decoders: fine-tuned with the GPT-1 head (tasks.finetune_gpt)
FINETUNED_MODEL_TYPES = ("encoder_for_task", "gpt_for_classification")
UNSEEN = -1  # the label id of a validation example whose label the model was not trained on


def finetune_run_defaults(task: str = "classification") -> RunConfig:
    """The run options fine-tuning starts from, for `task` (data.task: classification, regression, tagging or qa)."""
    run = RunConfig(model={})
    for key, value in FINETUNE_TRAIN_DEFAULTS.items():
        setattr(run.train, key, value)
    run.data.task = task
    check_section(run.data)  # names a task that is not one
    if task == "qa":  # BERT's SQuAD windows: a question and 128-token strides of context fit in 384 tokens
        run.data.max_tokens = QA_MAX_TOKENS
    return run


def load_pretrained_encoder(path: str | Path) -> tuple[BertModel, EncoderTokenizer]:
    """The encoder of a pretrained directory (tformer's or Hugging Face's), without pretraining heads."""
    from tformer.tasks.masked_lm import load_encoder

    model, tokenizer = load_encoder(path)
    encoder = model.bert if isinstance(model, BertForPreTraining) else model
    return encoder, tokenizer  # without a pooler, "pooler" pooling falls back to [CLS] (EncoderForTask)


def _pad(rows: list[list[int]], value: int) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def length_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar length (little padding) in a random order: shuffle, sort within chunks of 50
    batches, cut, shuffle the batches. Reproducible from the seed."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


class FineTuneTask:
    """Trainer protocol (see tformer.training.loop.Task) for one labelled data set and a pretrained encoder."""

    def __init__(self, run: RunConfig, encoder: BertModel, tokenizer: EncoderTokenizer, train_data: Any,
                 valid_data: Any = None, head: HeadConfig | None = None, model: EncoderForTask | None = None):
        from tformer import transfer

        check_section(run.data)  # values set from Python meet a file's checks
        self.run = run
        d, t = run.data, run.train
        self.kind = d.task
        self.tokenizer = tokenizer
        if d.max_tokens < 4:
            raise TformerError(f"data.max_tokens must be at least 4, not {d.max_tokens}")
        positions = self._context_size(encoder)
        self.max_tokens = min(d.max_tokens, positions)
        if d.max_tokens > positions and train_data and d.max_tokens != finetune_run_defaults(self.kind).data.max_tokens:
            # As transformers' run_glue/run_qa: a length above the model's positions is cut to them, with a warning
            # (it was cut without one). The task's default (128, qa 384) means "up to" and fits the model without
            # a word; evaluate and predict (no training data) read a saved run, warned about when it trained.
            warnings.warn(f"data.max_tokens={d.max_tokens} (--max-tokens) is more than the model's {positions} "
                          f"positions: inputs are cut to {positions} tokens", UserWarning, stacklevel=2)
        if model is None and not train_data:  # before the labels are read from it (IndexError on no tags)
            raise TformerError(self._no_examples("train"))
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        if model is not None and getattr(model.head_config, "task", self.kind) != self.kind:
            raise TformerError(f"data.task is {self.kind!r}, but the model's head was fine-tuned for "
                               f"{model.head_config.task!r}: set data.task={model.head_config.task}")
        if model is None:
            labels = self._labels(train_data) if self.kind in ("classification", "tagging") else []
            torch.manual_seed(t.seed)
            model = self._new_model(encoder, labels, head)
        self.model = model
        self.labels = model.head_config.labels
        self.label_index = {label: i for i, label in enumerate(self.labels)}
        self.input_file: str | None = None  # where `predict`'s data came from, for its errors (the CLI sets it)
        # Entity tags (O, B-TYPE, I-TYPE) are scored by entities; any other tag set (parts of speech) by the
        # share of words tagged right. Known before encoding: validation tags are checked against it.
        from tformer.metrics import is_entity_tag

        self.entities = self.kind == "tagging" and all(is_entity_tag(tag) for tag in self.labels)
        self.train_set = self.encode(train_data, "train")
        if valid_data is not None and not len(valid_data):  # its metrics would divide by zero
            raise TformerError(self._no_examples("valid"))
        self.valid_data = valid_data
        self.valid_set = self.encode(valid_data, "valid") if valid_data is not None else None
        # Strategies
        if t.strategy == "feature_extraction" and (t.gradual_unfreezing or t.freeze_layers):
            extra = "train.gradual_unfreezing" if t.gradual_unfreezing else f"train.freeze_layers={t.freeze_layers}"
            raise TformerError(f"{extra} goes with --strategy full: feature_extraction keeps the whole encoder "
                               "frozen")
        if t.strategy == "feature_extraction":
            transfer.freeze_encoder(model)
        elif t.freeze_layers:
            try:
                transfer.freeze_lower_layers(model, t.freeze_layers)
            except ValueError as exc:
                raise TformerError(f"train.freeze_layers={t.freeze_layers}: {exc}") from None
        self.unfreezer = transfer.GradualUnfreezer(model) if t.gradual_unfreezing else None
        tagging_metric = "f1" if self.entities else "tag_accuracy"
        self.selection_metric = {"classification": ("accuracy", "max"), "regression": ("pearson", "max"),
                                 "tagging": (tagging_metric, "max"), "qa": ("f1", "max")}[self.kind]

    # -- the model -------------------------------------------------------------------------------------

    def _context_size(self, encoder: nn.Module) -> int:
        return encoder.config.max_tokens

    def _new_model(self, encoder: nn.Module, labels: list[str], head: HeadConfig | None) -> nn.Module:
        run = self.run
        head = head or HeadConfig(task=self.kind, labels=labels, pooling=run.model.get("pooling", "pooler"),
                                  dropout=float(run.model.get("classifier_dropout", encoder.config.dropout)))
        return EncoderForTask(encoder, head)

    # -- data ------------------------------------------------------------------------------------------

    def question_budget(self) -> int:
        """QA: question tokens kept (64, as BERT's run_squad), fewer for short windows."""
        return min(64, self.max_tokens // 3)

    def _qa_windows(self, data, training: bool) -> list:
        """QA: each example's windows of context, framed with its question (data.squad.make_features)."""
        from tformer.data.squad import make_features

        stride, asked = self.run.data.doc_stride, self.run.data.max_tokens
        limit = stride_name = None
        if self.max_tokens < asked:
            # The model's positions cut the windows (bert-micro: 128 instead of 384): the stride shrinks in
            # proportion, so the default 128 of 384 becomes 42 of 128 rather than leaving no room for context.
            limit = f"the model's {self.max_tokens} positions"
            stride_name = f"data.doc_stride={stride}, scaled to {stride * self.max_tokens // asked} for {limit}"
            stride = stride * self.max_tokens // asked
        try:
            return make_features(self.tokenizer, data, max_length=self.max_tokens, stride=stride,
                                 max_question_tokens=self.question_budget(), training=training, length_name=limit,
                                 stride_name=stride_name)
        except TformerError as exc:
            if training and str(exc).startswith("example "):  # which file the example is in
                raise TformerError(f"{self.run.data.train_file}: {exc}") from None
            raise

    def _where(self, split: str) -> str:
        """The file a split came from, for error messages."""
        files = {"train": self.run.data.train_file, "valid": self.run.data.valid_file, "input": self.input_file}
        return files.get(split) or split

    def _no_examples(self, split: str) -> str:
        """The message for a split without examples, naming its file or, from Python, the argument."""
        file = self.run.data.train_file if split == "train" else self.run.data.valid_file
        where = file or f"{split}_data"
        purpose = "to train on" if split == "train" else "to validate on"
        return f"{where}: no examples in it; {self.kind} fine-tuning needs at least one {purpose}"

    def _labels(self, data) -> list[str]:
        if self.kind == "classification":
            from tformer.data.labeled import LabelVocab

            labels = LabelVocab.from_examples(data).to_list()
        else:
            labels = sorted({tag for sentence in data for tag in sentence.tags})
            if "O" in labels:  # "O" first: id 0 is the outside tag, as in most NER label lists
                labels.remove("O")
                labels.insert(0, "O")
        if len(labels) < 2:
            raise TformerError(f"{self.run.data.train_file or 'training data'}: every example has the "
                               f"{'label' if self.kind == 'classification' else 'tag'} {labels[0]!r}; "
                               "a classifier needs at least two")
        return labels

    def encode(self, data, split: str) -> list[dict]:
        """Each example as token ids (+ labels) of at most max_tokens tokens."""
        tok = self.tokenizer
        if self.kind in ("classification", "regression"):
            texts = [e.text for e in data]
            pairs = [e.pair or "" for e in data] if any(e.pair is not None for e in data) else None
            encoded = tok.encode_batch(texts, pairs, max_length=self.max_tokens, truncation="warn")
            out = []
            for e, enc in zip(data, encoded):
                if 0 in enc.lengths:
                    raise self._no_tokens(e, split, second=enc.lengths.index(0) == 1)
                item = {"ids": enc.ids, "type_ids": enc.type_ids}
                if e.label is not None:
                    item["label"] = self._label_id(e, split)
                    if self.kind == "classification" and item["label"] == UNSEEN:  # a score of -1.0 is a score
                        item["unseen"] = str(e.label)
                out.append(item)
            self._warn_unseen(split, [x["unseen"] for x in out if "unseen" in x], len(out), "examples", "labels")
            return out
        if self.kind == "tagging":
            out = [self._encode_tagged(s, split) for s in data]
            if n_cut := sum(x["cut"] for x in out):
                warnings.warn(f"{self._where(split)}: {n_cut} of {len(out)} sentences were longer than "
                              f"{self.max_tokens} tokens; their last words get no prediction (tagged O)",
                              UserWarning, stacklevel=2)
            if split != "input":  # predict's placeholder tags are the model's own
                unseen = [(s, w) for s in data for w, tag in enumerate(s.tags) if tag not in self.label_index]
                self._check_unseen_tags(unseen, split)
                self._warn_unseen(split, [s.tags[w] for s, w in unseen], sum(len(s.tags) for s in data), "words",
                                  "tags")
            return out
        features = self._qa_windows(data, training=split == "train")
        return [{"ids": f.ids, "type_ids": f.type_ids, "start": f.start, "end": f.end} for f in features] \
            if split == "train" else features

    def _no_tokens(self, example, split: str, second: bool) -> TformerError:
        """The error for a text of no tokens: a text the tokenizer keeps nothing of (only control or format
        characters such as a soft hyphen or a zero-width space), or a pair's missing second text given from Python.
        The readers already refuse an empty field; the encoder would read [CLS] A [SEP] [SEP], an empty segment B
        that training never showed it (transformers is of two minds: its tokenizer called on one pair drops a
        text_pair of "" altogether, called on a batch it keeps the empty segment)."""
        d = self.run.data
        column = (d.pair_column or "pair") if second else d.text_column
        return TformerError(f"{self._where(split)}:{example.line}: the text in column {column!r} gives no tokens "
                            f"(nothing but characters the tokenizer drops); as an empty field, it is refused rather "
                            f"than read as an empty {'second segment' if second else 'text'}")

    def _label_id(self, example, split: str) -> int | float:
        """A sentence example's target: the label's id (classification) or the number (regression). A label the
        model was not trained on is an error in training data (the head has no output for it) and UNSEEN
        elsewhere (validation, `evaluate`): scored as a miss, as sklearn and seqeval score a class never predicted."""
        if self.kind == "regression":
            return float(example.label)
        if str(example.label) not in self.label_index:
            if split != "train":
                return UNSEEN
            raise TformerError(f"label {example.label!r} at {self._where(split)}:{example.line} was not among "
                               f"the training labels ({', '.join(self.labels)})")
        return self.label_index[str(example.label)]

    def _warn_unseen(self, split: str, unseen: list[str], total: int, things: str, kind: str) -> None:
        """One warning for the labels (or tags) of a validation or evaluation file that the model was not trained
        on: how many, and which (the most frequent first), and that they count as misses."""
        if not unseen:
            return
        counts = Counter(unseen).most_common()
        shown = ", ".join(f"{label!r} ({n})" for label, n in counts[:8]) + (
            f" and {len(counts) - 8} more" if len(counts) > 8 else "")
        warnings.warn(f"{self._where(split)}: {len(unseen)} of {total} {things} have {kind} the model was not "
                      f"trained on: {shown}; they are scored as misses (it predicts only {', '.join(self.labels)})",
                      UserWarning, stacklevel=3)

    def _check_unseen_tags(self, unseen: list, split: str) -> None:
        """Unseen tags (sentence, word index) are scored as misses, but entity scores (used when the model's tags are
        all O, B-TYPE or I-TYPE) cannot read one that is not of that form: an error at its line. Every word is
        checked, those the tokenizer drops or truncation cuts too: their gold tags are scored alike."""
        from tformer.metrics import is_entity_tag

        if not self.entities:
            return
        for sentence, word in unseen:
            if not is_entity_tag(sentence.tags[word]):
                raise TformerError(f"tag {sentence.tags[word]!r} at {self._where(split)}:{sentence.line + word} is "
                                   f"not O, B-TYPE or I-TYPE, and the model's tags ({', '.join(self.labels)}) are "
                                   f"scored as entities")

    def _encode_tagged(self, sentence, split: str) -> dict:
        """Sub-tokens of the words; each word's tag on its first sub-token, -100 on the rest (never scored).

        first[w]: the position of word w's first sub-token, None for a word that has none: one the tokenizer
        drops whole (a soft hyphen, a zero-width joiner) or one past the truncation. Such a word is tagged O."""
        tok = self.tokenizer
        words = sentence.tokens
        if tok.style == "bpe":
            # Byte-level BPE reads a space as part of the word after it ("Ġworld"): without one, every word would
            # be split as a text's first word ("wor", "ld"), pieces the encoder did not see in running text.
            words = words[:1] + [" " + w for w in words[1:]]
        enc = tok.backend.encode(words, is_pretokenized=True, add_special_tokens=False)
        ids, labels = [tok.cls_id], [-100]
        first: list[int | None] = [None] * len(sentence.tokens)
        previous = None
        budget = self.max_tokens - 1
        cut = False
        for token_id, word in zip(enc.ids, enc.word_ids):
            if len(ids) >= budget:
                cut = True
                break
            if word != previous:
                tag = sentence.tags[word]
                if tag not in self.label_index and split == "train":  # elsewhere a miss (see _label_id)
                    raise TformerError(f"tag {tag!r} at {self._where(split)}:{sentence.line + word} was not among "
                                       f"the training tags ({', '.join(self.labels)})")  # one token a line
                labels.append(self.label_index.get(tag, -100))  # an unseen tag: no loss (evaluation reads tags)
                first[word] = len(ids)
            else:
                labels.append(-100)
            ids.append(token_id)
            previous = word
        ids.append(tok.sep_id)
        labels.append(-100)
        return {"ids": ids, "type_ids": [0] * len(ids), "labels": labels, "n_words": len(sentence.tokens),
                "first": first, "cut": cut}

    def _word_tags(self, item: dict, logits: Tensor) -> list[str]:
        """One predicted tag per word, from its first sub-token; O for a word without one (see _encode_tagged)."""
        best = logits.argmax(-1).tolist()
        return [self.labels[best[p]] if p is not None else "O" for p in item["first"]]

    def train_batches(self, epoch: int, seed: int) -> list[list[int]]:
        if not self.train_set:  # a model given with no training data (evaluate and predict build it so) trains on none
            raise TformerError(self._no_examples("train"))
        return length_batches([len(x["ids"]) for x in self.train_set], self.run.train.batch_size,
                              seed * 1_000_003 + epoch)

    def _collate(self, items: list[dict], device: torch.device) -> dict[str, Tensor]:
        ids = _pad([x["ids"] for x in items], self.pad_id)
        batch = {"ids": ids, "type_ids": _pad([x["type_ids"] for x in items], 0),
                 "attention_mask": _pad([[1] * len(x["ids"]) for x in items], 0).bool()}
        if "label" in items[0]:
            dtype = torch.float if self.kind == "regression" else torch.long
            batch["labels"] = torch.tensor([x["label"] for x in items], dtype=dtype)
        if "labels" in items[0]:
            batch["labels"] = _pad([x["labels"] for x in items], -100)
        if "start" in items[0]:
            batch["start"] = torch.tensor([x["start"] for x in items])
            batch["end"] = torch.tensor([x["end"] for x in items])
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def collate(self, batch: list[int], device: torch.device) -> dict[str, Tensor]:
        return self._collate([self.train_set[i] for i in batch], device)

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        """What the loss sums over: examples (sentence tasks, QA) or tagged words."""
        if self.kind == "tagging":
            return max(int((batch["labels"] != -100).sum()), 1)
        return batch["ids"].size(0)

    def input_tokens(self, batch: dict[str, Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def _forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        mask = batch["attention_mask"]
        return model(batch["ids"], batch["type_ids"], None if bool(mask.all()) else mask)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        logits = self._forward(model, batch).float()
        if self.kind == "classification":
            loss = F.cross_entropy(logits, batch["labels"], reduction="sum")
        elif self.kind == "regression":
            loss = F.mse_loss(logits, batch["labels"], reduction="sum")
        elif self.kind == "tagging":
            loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100,
                                   reduction="sum")
        else:  # qa: mean of the start and end cross-entropies
            start, end = logits.unbind(-1)
            start = start.masked_fill(~batch["attention_mask"], float("-inf"))
            end = end.masked_fill(~batch["attention_mask"], float("-inf"))
            loss = (F.cross_entropy(start, batch["start"], reduction="sum")
                    + F.cross_entropy(end, batch["end"], reduction="sum")) / 2
        return loss, {}

    # -- strategies the trainer asks for -----------------------------------------------------------------

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        from tformer import transfer

        t = self.run.train
        return transfer.layerwise_parameter_groups(self.model, head_lr_scale=1.0, encoder_lr_scale=t.encoder_lr_scale,
                                                   layer_decay=t.layer_decay, weight_decay=weight_decay)

    def on_epoch_start(self, epoch: int) -> str | None:
        if self.unfreezer is None:
            return None
        names = self.unfreezer.on_epoch_start(epoch)
        return f"epoch {epoch}: trainable now {', '.join(names)}" if names else None

    # -- evaluation --------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_logits(self, model: nn.Module, items: list[dict]) -> list[Tensor]:
        """Logits per item, in order (batched by length)."""
        device = next(model.parameters()).device
        out: list[Tensor | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: len(items[i]["ids"]))
        bs = max(self.run.train.batch_size, 64)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            batch = self._collate([{"ids": items[i]["ids"], "type_ids": items[i]["type_ids"]} for i in idx], device)
            logits = self._forward(model, batch).float().cpu()
            for k, i in enumerate(idx):
                out[i] = logits[k, : len(items[i]["ids"])] if logits.dim() > 2 else logits[k]
        return out  # type: ignore[return-value]

    def validate(self, model: nn.Module) -> dict[str, float]:
        if self.valid_set is None:
            return {}
        return self.evaluate(model, self.valid_data, self.valid_set)

    def evaluate(self, model: nn.Module, data, items) -> dict[str, float]:
        from tformer import metrics

        was_training = model.training
        model.eval()
        try:
            if self.kind == "qa":
                return self._evaluate_qa(model, data, items)
            logits = self.predict_logits(model, [{"ids": x["ids"], "type_ids": x["type_ids"]} for x in items])
        finally:
            model.train(was_training)
        if self.kind == "classification":
            # Labels as text: a label the model was not trained on (see _label_id) is a class of its own that it
            # never predicts, a miss in accuracy, F1 0 in macro-F1 (sklearn's labels = gold | predicted) and MCC
            # as sklearn's. The loss needs the model's probability of the gold label: it is over the other examples.
            pred = [self.labels[int(l.argmax())] for l in logits]
            gold = [x.get("unseen") or self.labels[x["label"]] for x in items]
            known = [(l, x["label"]) for l, x in zip(logits, items) if x["label"] != UNSEEN]
            scores = {"loss": float(F.cross_entropy(torch.stack([l for l, _ in known]),
                                                    torch.tensor([g for _, g in known])))} if known else {}
            return {**scores, "accuracy": metrics.accuracy(pred, gold), "macro_f1": metrics.macro_f1(pred, gold),
                    "mcc": metrics.matthews_corrcoef(pred, gold)}
        if self.kind == "regression":
            pred = [float(l) for l in logits]
            gold = [x["label"] for x in items]
            return {"mse": sum((p - g) ** 2 for p, g in zip(pred, gold)) / len(gold),
                    "pearson": metrics.pearson(pred, gold), "spearman": metrics.spearman(pred, gold)}
        # tagging: word-level tags from each word's first sub-token; words cut by truncation count as "O"
        pred_tags, gold_tags = [], []
        for sentence, x, l in zip(data, items, logits):
            pred_tags.append(self._word_tags(x, l))
            gold_tags.append(list(sentence.tags))
        words = sum(len(g) for g in gold_tags)
        correct = sum(p == g for ps, gs in zip(pred_tags, gold_tags) for p, g in zip(ps, gs))
        if not self.entities:
            return {"tag_accuracy": correct / max(words, 1)}
        scores = metrics.entity_prf(pred_tags, gold_tags, scheme=self.run.model.get("tag_scheme", "BIO"))
        return {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
                "tag_accuracy": correct / max(words, 1)}

    def qa_logits(self, model: nn.Module, features) -> tuple[Tensor, Tensor]:
        """QA: (F, T) start and end logits of every window, -inf past each window's end."""
        logits = self.predict_logits(model, [{"ids": f.ids, "type_ids": f.type_ids} for f in features])
        width = max(l.size(0) for l in logits)
        start = torch.full((len(logits), width), float("-inf"))  # windows differ in length: pad with -inf
        end = torch.full((len(logits), width), float("-inf"))
        for i, l in enumerate(logits):
            start[i, : l.size(0)], end[i, : l.size(0)] = l[:, 0], l[:, 1]
        return start, end

    def _answers(self, model: nn.Module, features, examples) -> dict[str, str]:
        """QA: the best answer text per example id, over all of its windows."""
        from tformer.data.squad import best_spans

        start, end = self.qa_logits(model, features)
        return best_spans(start, end, features, examples, max_answer_length=self.run.data.max_answer_length,
                          max_context=self.run.data.max_context)

    def _evaluate_qa(self, model: nn.Module, examples, features) -> dict[str, float]:
        from tformer.data.squad import squad_scores

        predictions = self._answers(model, features, examples)
        scores = squad_scores(predictions, examples)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"]}

    def predict(self, model: nn.Module, data) -> list[dict]:
        """JSON-ready predictions for unlabelled (or labelled) data in the training format; the model's
        train/eval mode is as it was afterwards."""
        was_training = model.training
        model.eval()
        try:
            return self._predict(model, data)
        finally:
            model.train(was_training)

    def _predict(self, model: nn.Module, data) -> list[dict]:
        if self.kind == "qa":
            features = self._qa_windows(data, training=False)
            answers = self._answers(model, features, data)
            return [{"id": e.id, "question": e.question, "answer": answers.get(e.id, "")} for e in data]
        if self.kind == "tagging":
            # Input tags (if any) are not read: every word gets a placeholder tag the model knows.
            items = [self._encode_tagged(replace(s, tags=[self.labels[0]] * len(s.tokens)), "input") for s in data]
            logits = self.predict_logits(model, items)
            out = []
            for s, x, l in zip(data, items, logits):
                out.append({"tokens": s.tokens, "tags": self._word_tags(x, l)})
            return out
        items = self.encode([replace(e, label=None) for e in data], "input")
        logits = self.predict_logits(model, items)
        if self.kind == "regression":
            return [{"text": e.text, **({"pair": e.pair} if e.pair else {}), "score": round(float(l), 6)}
                    for e, l in zip(data, logits)]
        out = []
        for e, l in zip(data, logits):
            p = torch.softmax(l, -1)
            record = {"text": e.text, **({"pair": e.pair} if e.pair else {}), "label": self.labels[int(p.argmax())],
                      "probabilities": {label: round(float(v), 6) for label, v in zip(self.labels, p)}}
            out.append(record)
        return out

    def save(self, path: Path, model: nn.Module, trainer_state: dict | None = None,
             optimizer_state: dict | None = None) -> None:
        config = {**model.to_dict(), "tformer_run": self.run.to_dict()}
        checkpoint.save_model(path, model, config, self.tokenizer, None, trainer_state, optimizer_state)


# -- building and using -------------------------------------------------------------------------------------


def read_task_file(run: RunConfig, path: str, labelled: bool = True):
    """The examples of one file, in the format of run.data.task."""
    d = run.data
    if d.task in ("classification", "regression"):
        from tformer.data.labeled import read_classification

        return read_classification(path, text_column=d.text_column, pair_column=d.pair_column or None,
                                   label_column=d.label_column if labelled else None,
                                   **({"label_type": "float"} if d.task == "regression" else {}))
    if d.task == "tagging":
        from tformer.data.labeled import read_conll

        return read_conll(path, tag_column=-1 if labelled else None)
    from tformer.data.squad import read_squad

    return read_squad(path, answers=labelled)


def _check_model_options(model: dict, from_gpt: bool) -> None:
    """model.key=value options of a fine-tuning run: known to the head being built, and of an allowed value
    (a tuple of strings: the choices; of numbers: the lowest allowed and the first too high)."""
    from tformer.metrics import TAG_SCHEMES

    options = ({"classifier_dropout": (0.0, 1.0), "lm_weight": (0.0, math.inf)} if from_gpt else
               {"classifier_dropout": (0.0, 1.0), "pooling": ("cls", "mean", "pooler"), "tag_scheme": TAG_SCHEMES})
    for key, value in model.items():
        if key == "pretrained":
            continue
        if key not in options:
            raise TformerError(f"model.{key}: not an option of fine-tuning {'a GPT' if from_gpt else 'an encoder'} "
                               f"(known: {', '.join(options)})")
        allowed = options[key]
        if isinstance(allowed[0], str):
            if value not in allowed:
                raise TformerError(f"model.{key}: {value!r} is not one of {', '.join(allowed)}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not allowed[0] <= value < allowed[1]:
            raise TformerError(f"model.{key}: {value!r} is not a number in [{allowed[0]}, {allowed[1]})")


def build_finetune_task(run: RunConfig, resume_dir: str | Path | None = None) -> FineTuneTask:
    d, t = run.data, run.train
    if not d.train_file:
        raise TformerError("fine-tuning needs data.train_file (--train FILE)")
    if t.early_stopping and not d.valid_file:
        raise TformerError(f"train.early_stopping={t.early_stopping} watches the validation score: give --valid FILE")
    # Options of other tasks' training that fine-tuning has no use for: set, they would be ignored without a word.
    for key, unused, why in (("label_smoothing", 0.0, "its losses have no label smoothing"),
                             ("max_tokens", TrainConfig.max_tokens,
                              "a batch is train.batch_size examples; data.max_tokens (--max-tokens) cuts each")):
        if getattr(t, key) != unused:
            raise TformerError(f"train.{key}={getattr(t, key)}: fine-tuning does not use it ({why})")
    pretrained = run.model.get("pretrained")
    if not pretrained:
        raise TformerError("fine-tuning needs a pretrained encoder (--model DIR)")
    # The checks on the starting model come before reading the (possibly large) files.
    source = checkpoint.read_config(pretrained)
    kind = source.get("model_type")
    from_gpt = kind in GPT_MODEL_TYPES
    if kind not in (*GPT_MODEL_TYPES, *FINETUNED_MODEL_TYPES, *ENCODER_MODEL_TYPES):
        raise TformerError(f"{pretrained}: model_type {kind!r} cannot be fine-tuned here: --model takes a BERT-family "
                           "encoder (tformer's, or bert, roberta, albert) or a GPT language model (tformer's or gpt2)")
    _check_model_options(run.model, from_gpt)
    if d.task == "qa" and run.model.get("classifier_dropout") and resume_dir is None:
        # The span head has none (models.heads); set, the option would be ignored without a word. A resumed run's
        # saved options are left as they were: its head ignores the value alike.
        raise TformerError(f"model.classifier_dropout={run.model['classifier_dropout']}: a QA head has no dropout "
                           "(its start and end scores read the encoder's last states directly, as in BERT and "
                           "transformers' BertForQuestionAnswering); leave it out")
    if from_gpt:
        from tformer.tasks.finetune_gpt import require_classification

        require_classification(d.task)
    # A fine-tuned model trains on, head included: more data, or a second schedule.
    finetuned = source.get("model_type") in FINETUNED_MODEL_TYPES
    head = finetuned_head(source, Path(pretrained) / checkpoint.CONFIG) if finetuned else None
    if head is not None and head.task != d.task:
        raise TformerError(f"{pretrained} is fine-tuned for {head.task!r}, not --task {d.task}: start from the "
                           f"pretrained model instead")
    if head is not None and resume_dir is None:
        # A QA head's saved dropout (0.1 before QA heads lost theirs) is not used, so it is not held against the run.
        for key, saved in (("pooling", getattr(head, "pooling", None)),
                           ("classifier_dropout", head.dropout if head.task != "qa" else None)):
            if key in run.model and saved is not None and run.model[key] != saved:
                raise TformerError(f"model.{key} cannot change from {saved!r} to {run.model[key]!r}: {pretrained} "
                                   "was fine-tuned with it (its head trains on as it is)")
    train_data = read_task_file(run, d.train_file)
    valid_data = read_task_file(run, d.valid_file) if d.valid_file else None
    resuming = resume_dir is not None and (Path(resume_dir) / checkpoint.CONFIG).is_file()
    if resuming or finetuned:
        model, tokenizer = load_finetuned(resume_dir if resuming else pretrained)
        task = task_for_model(run, model.train(), tokenizer, train_data, valid_data)
    elif from_gpt:
        from tformer.tasks.finetune_gpt import GPTClassificationTask
        from tformer.tasks.language_modeling import load_lm

        gpt, tokenizer = load_lm(pretrained)
        task = GPTClassificationTask(run, gpt.train(), tokenizer, train_data, valid_data)
    else:
        encoder, tokenizer = load_pretrained_encoder(pretrained)
        task = FineTuneTask(run, encoder.train(), tokenizer, train_data, valid_data)
    if t.max_steps == 0 and t.max_epochs:
        # Schedules that decay to the end need the end: epochs x this process's optimiser steps per epoch, as
        # the trainer takes them (its share of the batches, whole groups of accum_steps).
        from tformer.training.loop import schedule_config

        steps = schedule_config(replace(t, schedule="linear"), task, launched()).max_steps
        run.train = t = replace(t, max_steps=steps)
    return task


def task_for_model(run: RunConfig, model: nn.Module, tokenizer, train_data, valid_data=None) -> FineTuneTask:
    """The task that trains, evaluates and predicts with a fine-tuned model of either kind."""
    from tformer.models.heads import GPTForClassification

    if isinstance(model, GPTForClassification):
        from tformer.tasks.finetune_gpt import GPTClassificationTask

        return GPTClassificationTask(run, model.gpt, tokenizer, train_data, valid_data, model=model)
    return FineTuneTask(run, model.bert, tokenizer, train_data, valid_data, model=model)


# A fine-tuned model's config.json: its pretrained network's options under this key (by model_type), and "head".
_NETWORKS = {"encoder_for_task": ("encoder", BertConfig), "gpt_for_classification": ("gpt", GPTConfig)}


def finetuned_head(data: dict, file: Path) -> HeadConfig:
    """The head of a fine-tuned model's config.json (`data`, read from `file`); the network's options are checked
    on the way, so that a hand-edited file is named with the key that is wrong, not met in the model's code."""
    key, config = _NETWORKS[data["model_type"]]
    checkpoint.from_saved(config, checkpoint.saved_section(data, key, file, f"pretrained {key}'s options"),
                          str(file), f"{key}.")
    head = checkpoint.saved_section(data, "head", file, "fine-tuned head's task and labels")
    return checkpoint.from_saved(HeadConfig, head, str(file), "head.")


def load_finetuned(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer) of a fine-tuned directory: an EncoderForTask with its EncoderTokenizer,
    or a GPTForClassification with its language-model Tokenizer."""
    from tformer.models.heads import GPTForClassification
    from tformer.tokenization import Tokenizer

    path = Path(path)
    data = checkpoint.read_config(path)
    kinds = {"encoder_for_task": EncoderForTask, "gpt_for_classification": GPTForClassification}
    kind = kinds.get(data.get("model_type"))
    if kind is None:
        raise TformerError(f"{path}: not a fine-tuned model (model_type {data.get('model_type')!r})")
    file = path / checkpoint.CONFIG
    head = finetuned_head(data, file)
    try:  # the head as checked, its defaults filled in
        model = kind.from_dict({**data, "head": asdict(head)})
    except (TypeError, ValueError) as exc:
        raise TformerError(f"{file}: {exc}") from None
    checkpoint.load_weights(path, model)
    if kind is GPTForClassification:
        tokenizer = Tokenizer.load(path / checkpoint.TOKENIZER, required=())
    else:
        tokenizer = EncoderTokenizer.load(path / checkpoint.TOKENIZER)
    return model.to(device).eval(), tokenizer


__all__ = ["FineTuneTask", "build_finetune_task", "load_finetuned", "task_for_model", "finetune_run_defaults",
           "length_batches"]


# -- feature extraction: a frozen encoder's vectors and a classifier fitted on them ----------------------------


def fit_logistic_regression(features: Tensor, labels: Tensor, n_classes: int, l2: float = 1e-4,
                            max_iter: int = 200) -> nn.Linear:
    """Multinomial logistic regression on fixed features, fitted by full-batch L-BFGS to the minimum of
    mean cross-entropy + l2 * |W|^2 (the features are standardised first; the returned layer undoes it).

    Needs examples of at least two classes (as scikit-learn's LogisticRegression): with one, the bias, which the
    l2 term does not hold, grows without end and the fit ends in NaN or an overflow; a single example is one class."""
    if features.dim() != 2 or labels.dim() != 1 or features.size(0) != labels.size(0):
        raise TformerError(f"fit_logistic_regression: features of shape {tuple(features.shape)} and labels of shape "
                           f"{tuple(labels.shape)}: expected (N, D) features and N labels")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TformerError(f"fit_logistic_regression: labels are {labels.dtype}; expected class ids (integers)")
    if n_classes < 2:
        raise TformerError(f"fit_logistic_regression: n_classes={n_classes}; a classifier needs at least two")
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < n_classes):
        raise TformerError(f"fit_logistic_regression: labels run from {int(labels.min())} to {int(labels.max())}, "
                           f"outside 0 to {n_classes - 1} (n_classes={n_classes})")
    classes = labels.unique().tolist()
    if not classes:
        raise TformerError(f"fit_logistic_regression: no examples (features of shape {tuple(features.shape)})")
    if len(classes) < 2:
        raise TformerError(f"fit_logistic_regression: the {labels.numel()} example(s) are all of class {classes[0]}; "
                           "a classifier needs examples of at least two classes")
    x = features.float()
    if not bool(torch.isfinite(x).all()):
        raise TformerError("fit_logistic_regression: the features hold NaN or infinite values")
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    layer = nn.Linear(x.size(1), n_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(layer(z), labels) + l2 * layer.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # fold the standardisation into the layer: W (x - m) / s + b
        w = layer.weight / std
        layer.bias -= (w * mean).sum(1)
        layer.weight.copy_(w)
    return layer


class DistillationTask(FineTuneTask):
    """Train a small student on a fine-tuned teacher's softened predictions (Hinton et al. 2015):
        L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)
    The teacher runs without gradient in eval mode; the student is used at T = 1 afterwards, as any classifier.
    Classification only."""

    def __init__(self, run: RunConfig, student: EncoderForTask, teacher: EncoderForTask, tokenizer: EncoderTokenizer,
                 train_data, valid_data=None, temperature: float = 2.0, alpha: float = 0.5):
        if run.data.task != "classification":
            raise TformerError("distillation is implemented for classification")
        if not 0 <= alpha <= 1 or not temperature > 0:
            raise TformerError(f"distillation needs alpha in [0, 1] and a temperature above 0, not alpha={alpha}, "
                               f"temperature={temperature}")
        super().__init__(run, student.bert, tokenizer, train_data, valid_data, model=student)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        from tformer.transfer import distillation_loss

        student = self._forward(model, batch).float()
        with torch.no_grad():
            teacher = self._forward(self.teacher.to(student.device), batch).float()
        n = batch["ids"].size(0)
        soft = distillation_loss(student, teacher, self.temperature) * n  # the trainer divides by n
        hard = F.cross_entropy(student, batch["labels"], reduction="sum")
        return self.alpha * soft + (1 - self.alpha) * hard, {}
