"""Task heads on a pretrained encoder (Devlin et al. 2019, section 4 and figure 4) or decoder (Radford et al.
2018, section 3.2):

    sentence / sentence pair   softmax(W pooled + b): the pooled [CLS] state (or the [CLS] state, or the mean
                               of the tokens); a pair is one input, [CLS] A [SEP] B [SEP]; regression: 1 output
    token tagging              softmax(W h_t + b) at every token (labels sit on each word's first sub-token)
    extractive QA              start and end scores s_t = S . h_t, e_t = E . h_t over the context tokens
    GPT-1 classification       softmax(W h_last + b) on the decoder's state at the last token, trained with
                               L = L_task + lambda * L_LM (the auxiliary language-modelling loss)

Each fine-tuning model keeps its pretrained network as `.bert` (or `.gpt`), so transfer strategies
(tformer.transfer) find its layers, and its new parameters in `.head`.

Dropout before the head's linear map follows transformers' heads (and the papers' fine-tuning code): sentence
classification and regression (BertForSequenceClassification, num_labels=1 for regression) and token tagging
(BertForTokenClassification) apply classifier dropout; extractive QA (BertForQuestionAnswering, as BERT's
run_squad.py) applies none, its span scores reading the encoder's last states directly; GPT-1's classifier
(OpenAIGPTDoubleHeadsModel's summary_first_dropout, "dropout to the classifier with a rate of 0.1") applies it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn

from tformer.models.bert import BertConfig, BertModel
from tformer.models.gpt import GPT, GPTConfig
from tformer.nn.dropout import Dropout
from tformer.nn.linear import Linear

TaskKind = Literal["classification", "regression", "tagging", "qa"]
Pooling = Literal["pooler", "cls", "mean", "last"]  # "last": a decoder's last real token (GPT-1)


@dataclass
class HeadConfig:
    """What sits on the encoder: the task, its labels, how a sentence becomes one vector."""

    task: TaskKind = "classification"
    labels: list[str] = field(default_factory=list)  # classification and tagging: id -> label
    pooling: Pooling = "pooler"  # sentence tasks; "pooler" falls back to "cls" for encoders without one
    dropout: float = 0.1  # before the head's linear map (BERT's classifier dropout); a QA head has none (0.0)

    @property
    def n_outputs(self) -> int:
        if self.task == "regression":
            return 1
        if self.task == "qa":
            return 2
        return len(self.labels)


def _pool(hidden: Tensor, pooled: Tensor | None, mask: Tensor | None, pooling: Pooling) -> Tensor:
    from tformer.tasks.encoding import pool

    if pooling == "pooler" and pooled is None:
        pooling = "cls"  # encoders saved without a pooler
    return pool(hidden, mask, pooling, pooled)


class EncoderForTask(nn.Module):
    """A pretrained encoder (`bert`) and a new linear head (`head`) for one of the tasks above."""

    def __init__(self, encoder: BertModel | BertConfig, head: HeadConfig):
        super().__init__()
        self.bert = encoder if isinstance(encoder, BertModel) else BertModel(encoder)
        self.config = self.bert.config
        if head.n_outputs < 1 or (head.task in ("classification", "tagging") and head.n_outputs < 2):
            raise ValueError(f"a {head.task} head needs at least 2 labels, got {head.labels}")
        if head.task == "qa" and head.dropout:
            # BERT's span head has no dropout (see the module docstring); HeadConfig's default of 0.1 is the
            # classifiers', and QA heads saved before this was fixed recorded it: both mean "BERT's head".
            head = replace(head, dropout=0.0)
        self.head_config = head
        self.dropout = Dropout(head.dropout)
        self.head = Linear(self.config.d_model, head.n_outputs)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, ids: Tensor, type_ids: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """What the head reads: (B, D) for sentence tasks, (B, T, D) for tagging and QA."""
        out = self.bert(ids, type_ids, attention_mask)
        if self.head_config.task in ("tagging", "qa"):
            return out.hidden
        return _pool(out.hidden, out.pooled, attention_mask, self.head_config.pooling)

    def forward(self, ids: Tensor, type_ids: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """classification (B, C); regression (B,); tagging (B, T, C); qa (B, T, 2) start and end scores."""
        logits = self.head(self.dropout(self.features(ids, type_ids, attention_mask)))
        return logits.squeeze(-1) if self.head_config.task == "regression" else logits

    def to_dict(self) -> dict:
        return {"model_type": "encoder_for_task", "encoder": self.config.to_dict(), "head": asdict(self.head_config)}

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderForTask":
        return cls(BertConfig.from_dict(data["encoder"]), HeadConfig(**data["head"]))


class GPTForClassification(nn.Module):
    """GPT-1's fine-tuning (Radford et al. 2018, eq. 3-5): a linear head on the last real token's state, and
    the language-modelling loss on the same text kept as an auxiliary objective, L3 = L2 + lambda * L1."""

    def __init__(self, gpt: GPT | GPTConfig, n_labels: int = 0, lm_weight: float = 0.5, dropout: float = 0.1,
                 labels: list[str] | None = None):
        super().__init__()
        self.gpt = gpt if isinstance(gpt, GPT) else GPT(gpt)
        self.config = self.gpt.config
        labels = list(labels) if labels is not None else [str(i) for i in range(n_labels)]
        if len(labels) < 2:
            raise ValueError(f"a classification head needs at least 2 labels, got {labels}")
        self.head_config = HeadConfig(task="classification", labels=labels, pooling="last", dropout=dropout)
        self.lm_weight = lm_weight
        self.dropout = Dropout(dropout)
        self.head = Linear(self.config.d_model, len(labels))
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def _has_next(ids: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) bool: real positions followed by a real token, where a next-token loss exists."""
        return torch.arange(ids.size(1), device=ids.device)[None, :] < (lengths[:, None] - 1)

    def forward(self, ids: Tensor, lengths: Tensor, lm: bool = True) -> tuple[Tensor, Tensor | None]:
        """ids (B, T) right-padded, lengths (B,) -> (class logits (B, C), next-token logits (K, V) at the K
        positions of _has_next, or None with lm=False). Right padding needs no mask: causal attention never
        lets a real token see the padding after it."""
        keep = self._has_next(ids, lengths) if lm else torch.zeros_like(ids, dtype=torch.bool)
        out = self.gpt(ids, keep=keep, return_hidden=True)
        last = out.hidden[torch.arange(ids.size(0), device=ids.device), lengths - 1]  # (B, D)
        return self.head(self.dropout(last)), (out.logits if lm else None)

    def loss(self, ids: Tensor, lengths: Tensor, labels: Tensor) -> tuple[Tensor, dict]:
        """Mean classification loss + lm_weight x mean next-token loss over the real tokens."""
        return self.loss_from_outputs(*self(ids, lengths, lm=self.lm_weight > 0), ids, lengths, labels)

    def loss_from_outputs(self, logits: Tensor, lm_logits: Tensor | None, ids: Tensor, lengths: Tensor,
                          labels: Tensor) -> tuple[Tensor, dict]:
        """The loss of `loss` from a forward's outputs (a DDP-wrapped model runs forward through the wrapper)."""
        task_sum, lm_sum, targets = self.loss_sums(logits, lm_logits, ids, lengths, labels)
        task = task_sum / ids.size(0)
        if lm_sum is None:
            return task, {"task": task.detach()}
        # Mean over the K next-token targets; a batch of one-token inputs has none (K = 0), and a plain mean of
        # nothing is NaN, which would stop training: its LM loss is 0 instead.
        lm = lm_sum / max(targets, 1)
        return task + self.lm_weight * lm, {"task": task.detach(), "lm": lm.detach()}

    def loss_sums(self, logits: Tensor, lm_logits: Tensor | None, ids: Tensor, lengths: Tensor, labels: Tensor
                  ) -> tuple[Tensor, Tensor | None, int]:
        """(classification loss summed over the examples, next-token loss summed over the K targets or None
        without lm_logits, K). Sums, not means, so that a trainer accumulating micro-batches can divide each by
        the step's own count (tformer.tasks.finetune_gpt): means of micro-batches weight their tokens unevenly."""
        task = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        if lm_logits is None:
            return task, None, 0
        targets = ids.roll(-1, dims=1)[self._has_next(ids, lengths)]  # the token after each kept position
        return task, nn.functional.cross_entropy(lm_logits.float(), targets, reduction="sum"), int(targets.numel())

    def to_dict(self) -> dict:
        return {"model_type": "gpt_for_classification", "gpt": self.config.to_dict(),
                "head": asdict(self.head_config), "lm_weight": self.lm_weight}

    @classmethod
    def from_dict(cls, data: dict) -> "GPTForClassification":
        head = data["head"]
        return cls(GPTConfig.from_dict(data["gpt"]), lm_weight=data.get("lm_weight", 0.5),
                   dropout=head.get("dropout", 0.1), labels=head["labels"])
