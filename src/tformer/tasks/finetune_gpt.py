"""Fine-tuning a pretrained GPT language model as a classifier, the GPT-1 way (Radford et al. 2018, section 3).

Input transformation (section 3.3): every example becomes one token sequence for the decoder,
    single sentence    <s> text <e>
    sentence pair      <s> text <d> pair <e>
with the start, delimiter and extract tokens all the tokenizer's end-of-text token (<|endoftext|>, or </s>)
when it has one; a character vocabulary without one uses a newline as delimiter and no start or extract token.
The classifier reads the decoder state at the last token (tformer.models.heads.GPTForClassification) and the
loss is L_task + lambda * L_LM, lambda = model.lm_weight (GPT-1 used 0.5; 0 turns the auxiliary loss off).

Everything else (reading the files, label checks, length-bucketed batches, the transfer strategies, metrics,
`tformer predict` and `tformer evaluate`) is the encoder fine-tuning's (tformer.tasks.finetune).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from tformer.config import RunConfig
from tformer.encoder_tokenization import pair_lengths
from tformer.errors import TformerError
from tformer.models.gpt import GPT
from tformer.models.heads import GPTForClassification, HeadConfig
from tformer.tasks.finetune import UNSEEN, FineTuneTask
from tformer.tokenization import Tokenizer

GPT1_LM_WEIGHT = 0.5  # lambda of GPT-1's L3 = L2 + lambda * L1


def gpt1_special_tokens(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """(start = extract, delimiter) ids of the input transformation: the end-of-text token for both; without
    one, no start or extract token and a newline (when the vocabulary has one) as delimiter."""
    eos = tokenizer.eos_id
    if eos is not None:
        return [eos], [eos]
    newline = tokenizer.backend.token_to_id("\n")
    return [], [newline] if newline is not None else []


def gpt1_input(special: tuple[list[int], list[int]], text: list[int], pair: list[int] | None = None) -> list[int]:
    """<s> text <e>, or <s> text <d> pair <e>: the one sequence the decoder reads for an example."""
    start_end, delimiter = special
    return start_end + text + (delimiter + pair if pair is not None else []) + start_end


def require_classification(task: str) -> None:
    if task != "classification":
        raise TformerError(f"a GPT model fine-tunes for classification (the GPT-1 head), not --task {task}: "
                           f"use a BERT-family encoder for {task}")


class GPTClassificationTask(FineTuneTask):
    """Sentence (pair) classification with a GPT decoder; see the module docstring."""

    def __init__(self, run: RunConfig, gpt: GPT, tokenizer: Tokenizer, train_data, valid_data=None,
                 model: GPTForClassification | None = None):
        require_classification(run.data.task)
        self.special = gpt1_special_tokens(tokenizer)
        super().__init__(run, gpt, tokenizer, train_data, valid_data, model=model)

    def _context_size(self, encoder: nn.Module) -> int:
        return encoder.config.max_len

    def _new_model(self, encoder: nn.Module, labels: list[str], head: HeadConfig | None) -> nn.Module:
        m = self.run.model
        return GPTForClassification(encoder, labels=labels, lm_weight=float(m.get("lm_weight", GPT1_LM_WEIGHT)),
                                    dropout=float(m.get("classifier_dropout", encoder.config.dropout)))

    def encode(self, data, split: str) -> list[dict]:
        tok, (start_end, delimiter) = self.tokenizer, self.special
        out, cut = [], 0
        for e in data:
            where = f"{self._where(split)}:{e.line}"
            tok.check_chars(e.text, where)
            text = tok.backend.encode(e.text, add_special_tokens=False).ids
            pair = None
            if e.pair is not None:
                tok.check_chars(e.pair, where)
                pair = tok.backend.encode(e.pair, add_special_tokens=False).ids
            if not text or (pair is not None and not pair):  # as an encoder's (FineTuneTask._no_tokens)
                raise self._no_tokens(e, split, second=bool(text))
            budget = self.max_tokens - 2 * len(start_end) - (len(delimiter) if pair is not None else 0)
            if budget < 1 + (pair is not None):
                # Less would leave a text with no token (or, as before, go past the model's positions): a setting
                # to change, as an encoder's tokenizer says of the same max_length.
                raise TformerError(f"data.max_tokens={self.max_tokens} leaves no room for "
                                   f"{'both texts of a pair' if pair is not None else 'the text'} beside the "
                                   f"{self.max_tokens - budget} start, delimiter and extract tokens")
            if len(text) + len(pair or []) > budget:
                cut += 1
                text, pair = _truncate_longest_first(text, pair, budget)
            ids = gpt1_input(self.special, text, pair)
            item = {"ids": ids, "type_ids": [0] * len(ids)}
            if e.label is not None:
                item["label"] = self._label_id(e, split)
                if item["label"] == UNSEEN:
                    item["unseen"] = str(e.label)
            out.append(item)
        if cut:
            warnings.warn(f"{self._where(split)}: {cut} of {len(out)} inputs were longer than {self.max_tokens} "
                          f"tokens and were cut", stacklevel=2)
        self._warn_unseen(split, [x["unseen"] for x in out if "unseen" in x], len(out), "examples", "labels")
        return out

    def _forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(batch["ids"], batch["attention_mask"].sum(1), lm=False)[0]

    def _lm_on(self) -> bool:
        return self.model.lm_weight > 0

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        """What the trainer divides the loss by: the next-token targets of the auxiliary LM loss (at least 1, as
        masked LM's count: a batch of one-token inputs has none), or the examples without that loss. The
        classification part is per example, weighted through count_examples and loss's example_weight."""
        if not self._lm_on():
            return batch["ids"].size(0)
        return max(int((batch["attention_mask"].sum(1) - 1).clamp(min=0).sum()), 1)

    def count_examples(self, batch: dict[str, Tensor]) -> int:
        """The examples the classification loss sums over."""
        return batch["ids"].size(0)

    def loss(self, model: nn.Module, batch: dict[str, Tensor], example_weight: float | None = None
             ) -> tuple[Tensor, dict]:
        """lm_weight x the next-token loss summed over its targets, plus the classification loss summed over the
        examples times example_weight. The trainer divides the whole by the step's count_tokens (the targets) and
        passes example_weight = the step's targets / its examples, so the step's loss is the classification mean
        over its examples plus lm_weight x the LM mean over its targets, whichever micro-batch (and process) each
        is in. (The loss was this batch's means times its examples: accumulated, a micro-batch with fewer targets
        per example weighted each of its targets more than one batch of them all would.) Without example_weight,
        this batch's own ratio: a step of this batch alone, the value of GPTForClassification.loss."""
        core = model.module if hasattr(model, "module") else model  # under DDP, forward goes through the wrapper
        ids, lengths = batch["ids"], batch["attention_mask"].sum(1)
        outputs = model(ids, lengths, lm=core.lm_weight > 0)
        task, lm, _ = core.loss_sums(*outputs, ids, lengths, batch["labels"])
        tokens = self.count_tokens(batch)  # (the LM's targets, at least 1)
        if example_weight is None:
            example_weight = tokens / self.count_examples(batch)
        total = task * example_weight
        parts = {"task": task.detach() / ids.size(0)}
        if lm is not None:
            total = total + core.lm_weight * lm
            parts["lm"] = lm.detach() / tokens
        return total, parts


def _truncate_longest_first(text: list[int], pair: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Cut the ends of the texts to fit `budget` tokens by the rule an encoder's pairs are cut by (transformers'
    truncation="longest_first", as the tokenizers library does it for BERT and GPT-2 alike: see
    tformer.encoder_tokenization.pair_lengths), so that a pair loses the same tokens whichever model reads it.
    (This cut one token at a time from the longer text, from the first on a tie, which kept the odd token in the
    second even when the first was the longer: 6 + 5 tokens in 7 gave 3 + 4, where transformers gives 4 + 3.)"""
    if pair is None:
        return list(text[:budget]), None
    keep_text, keep_pair = pair_lengths(len(text), len(pair), budget)
    return list(text[:keep_text]), list(pair[:keep_pair])


__all__ = ["GPTClassificationTask", "GPT1_LM_WEIGHT", "require_classification"]
