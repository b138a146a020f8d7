"""Transfer learning: how a pretrained encoder is adapted to a new task, or compressed into a smaller one.

    freezing               feature extraction (the encoder frozen, only the new head trains) or the lowest
                           n layers frozen; general features sit low, task-specific ones high
                           (Yosinski et al. 2014; Howard & Ruder 2018, section 3.3)
    discriminative rates   each layer its own learning rate, eta^{l-1} = eta^l / 2.6 (ULMFiT, Howard & Ruder
                           2018, section 3.2), and a smaller rate for pretrained weights than for the new head
    slanted triangular     ULMFiT's schedule: tformer.training.schedules.slanted_triangular_lr
    gradual unfreezing     the top layer first, one more layer each epoch (ULMFiT, section 3.3)
    early stopping         stop when validation stops improving, keep the best checkpoint
    distillation           a student trained on the teacher's softened outputs (Hinton et al. 2015); DistilBERT's
                           triple loss and its student made of every other teacher layer (Sanh et al. 2019)

The functions work on a pretrained network, a BertModel or a GPT decoder, or on any model that holds one as
`.bert`, `.encoder` or `.gpt` (BertForPreTraining, tformer.models.heads.EncoderForTask, GPTForClassification).
"The head" is every parameter of the model outside that network. Layers are numbered l = 1..N from the
bottom, the embeddings (token and position) below layer 1. Parameters that belong to no layer (the pooler, a
pre-LN final LayerNorm, an untied output matrix) sit on top of layer N and go with it.

Shapes: B batch, T tokens, D = d_model, C classes, V vocabulary, M masked positions.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tformer.models.bert import BertForPreTraining, BertModel
from tformer.models.gpt import GPT
from tformer.training.early_stopping import EarlyStopping  # noqa: F401  (part of this module's API)
from tformer.training.optim import parameter_groups

# -- freezing ----------------------------------------------------------------------------------------------


def find_encoder(model: nn.Module) -> BertModel | GPT:
    """The pretrained network in `model`: the model itself, or its `.bert`, `.encoder` or `.gpt` attribute."""
    if isinstance(model, (BertModel, GPT)):
        return model
    for name in ("bert", "encoder", "gpt"):
        candidate = getattr(model, name, None)
        if isinstance(candidate, (BertModel, GPT)):
            return candidate
    raise TypeError(f"{type(model).__name__} is not a BertModel or GPT and holds none as .bert, .encoder or .gpt")


def _embeddings(network: BertModel | GPT) -> nn.Module:
    if isinstance(network, GPT):  # W_e and W_p, as one part (a list registers nothing on the model)
        return nn.ModuleList([network.tok_embed, network.pos_embed])
    return network.embeddings


def _stack(network: BertModel | GPT) -> list[nn.Module]:
    """The layers in the order they are applied (ALBERT: the same module N times)."""
    if isinstance(network, GPT):
        return list(network.decoder.layers)
    return network.encoder.stack()


def freeze(module: nn.Module) -> nn.Module:
    """requires_grad = False on every parameter: no gradient is computed for them, and the optimizer skips them."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """requires_grad = True on every parameter."""
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """[embeddings, layer 1, ..., layer N], bottom to top, in the order they are applied.

    A shared encoder (ALBERT) gives the same layer module N times."""
    encoder = find_encoder(model)
    return [_embeddings(encoder), *_stack(encoder)]


def _is_shared(encoder: BertModel | GPT) -> bool:
    stack = _stack(encoder)
    return len({id(layer) for layer in stack}) < len(stack)


def freeze_lower_layers(model: nn.Module, n: int) -> list[str]:
    """Freeze the embeddings and the lowest n encoder layers; returns the names of what was frozen.

    n counts encoder layers: n = 0 freezes nothing, n >= 1 freezes the embeddings too (they lie below layer
    1), n = N freezes every layer but leaves the pooler and the head trainable. Nothing is unfrozen.
    A shared encoder (ALBERT) applies one layer's parameters at every depth, so it can only be frozen whole:
    n strictly between 0 and N raises ValueError."""
    encoder = find_encoder(model)
    big_n = len(_stack(encoder))
    if not 0 <= n <= big_n:
        raise ValueError(f"can freeze 0 to {big_n} layers, not {n}")
    if _is_shared(encoder) and 0 < n < big_n:
        raise ValueError(f"the encoder shares one layer's parameters across all {big_n} layers (ALBERT), "
                         f"so its lowest {n} layers cannot be frozen alone: freeze 0 or {big_n}")
    if n == 0:
        return []
    layers = encoder_layers(encoder)[: n + 1]
    for module in layers:
        freeze(module)
    return ["embeddings"] + [f"layer{l}" for l in range(1, n + 1)]


def freeze_encoder(model: nn.Module) -> None:
    """Feature extraction: the whole pretrained encoder (embeddings, layers, pooler) frozen, the head trainable.

    Dropout inside the encoder still applies in train mode; call .eval() on the encoder for fixed features."""
    freeze(find_encoder(model))


def _encoder_parts(encoder: BertModel | GPT) -> list[tuple[str, list[nn.Parameter]]]:
    """[("embeddings", params), ("layer1", params), ..., ("layerN", params)], each parameter in exactly one part.

    Parameters are claimed from the top down: a shared layer's (ALBERT) belong to layer N, the highest depth
    it is applied at, and layers 1..N-1 are empty. The pooler (and a final LayerNorm) joins layer N."""
    seen: set[int] = set()

    def take(module: nn.Module) -> list[nn.Parameter]:
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        return params

    stack = _stack(encoder)
    top_down = [(f"layer{l}", take(stack[l - 1])) for l in range(len(stack), 0, -1)]
    embeddings = take(_embeddings(encoder))
    top_down[0][1].extend(take(encoder))  # everything left: pooler, final norm, an untied output matrix
    return [("embeddings", embeddings), *reversed(top_down)]


def _head_params(model: nn.Module, encoder: BertModel | GPT) -> list[nn.Parameter]:
    inside = {id(p) for p in encoder.parameters()}
    return [p for p in model.parameters() if id(p) not in inside]


# -- discriminative learning rates -------------------------------------------------------------------------


def layerwise_parameter_groups(model: nn.Module, head_lr_scale: float = 1.0, encoder_lr_scale: float = 1.0,
                               layer_decay: float = 1.0, weight_decay: float = 0.01) -> list[dict]:
    """Parameter groups with discriminative learning rates: each group's `lr_scale` multiplies the scheduled lr.

        head               head_lr_scale
        layer l (1..N)     encoder_lr_scale * layer_decay ** (N - l)     (the pooler with layer N)
        embeddings         encoder_lr_scale * layer_decay ** N
    ULMFiT's discriminative fine-tuning (Howard & Ruder 2018, eq. 2) is layer_decay = 1 / 2.6; "a smaller rate
    for the pretrained weights than for the new head" is encoder_lr_scale < head_lr_scale.
    Weight decay as in optim.parameter_groups: on matrices, not on biases, norms or embedding tables.
    Frozen parameters are left out (see GradualUnfreezer for a schedule that freezes after this is built);
    a shared parameter appears once, with the scale of the highest layer it belongs to. Groups with the same
    scale and decay are merged; each has a `name` listing its parts, for the log."""
    if layer_decay <= 0 or head_lr_scale < 0 or encoder_lr_scale < 0:
        raise ValueError(f"layer_decay must be positive and the scales non-negative, got layer_decay={layer_decay}, "
                         f"head_lr_scale={head_lr_scale}, encoder_lr_scale={encoder_lr_scale}")
    encoder = find_encoder(model)
    decayed = {id(p) for g in parameter_groups(model, 1.0) if g["weight_decay"] > 0 for p in g["params"]}
    parts = [("head", head_lr_scale, _head_params(model, encoder))]
    for depth, (name, params) in enumerate(reversed(_encoder_parts(encoder))):  # top down: depth = N - l
        parts.append((name, encoder_lr_scale * layer_decay**depth, params))  # embeddings: depth N

    merged: dict[tuple[float, float], dict] = {}
    for name, scale, params in parts:
        for p in params:
            if not p.requires_grad:
                continue
            wd = weight_decay if id(p) in decayed else 0.0
            group = merged.setdefault((scale, wd), {"params": [], "weight_decay": wd, "lr_scale": scale, "name": []})
            group["params"].append(p)
            if name not in group["name"]:
                group["name"].append(name)
    return [{**g, "name": "+".join(g["name"])} for g in merged.values()]


def make_optimizer(groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the groups, each starting at lr * lr_scale (a trainer resets g["lr"] every step the same way).

    The fused kernel (CPU and CUDA) updates all tensors of a group at once; it is the same update."""
    groups = [{**g, "lr": lr * g.get("lr_scale", 1.0)} for g in groups]
    devices = {p.device.type for g in groups for p in g["params"]}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=devices <= {"cpu", "cuda"})


# -- gradual unfreezing ------------------------------------------------------------------------------------


class GradualUnfreezer:
    """ULMFiT's gradual unfreezing (Howard & Ruder 2018, section 3.3): "we first unfreeze the last layer and
    fine-tune all unfrozen layers for one epoch. We then unfreeze the next lower frozen layer and repeat".

    Epoch e trains the head and the top e + 1 of [embeddings, layer 1, ..., layer N] (with epochs_per_layer k:
    the top e // k + 1), so epoch 0 trains the head and layer N (with the pooler), and epoch N everything.
    A shared encoder (ALBERT) has two parts only: the shared layer, then the embeddings.

    Nothing is frozen until the first on_epoch_start, so an optimizer built in between holds every parameter;
    it keeps working as parameters are frozen and unfrozen: a frozen parameter gets no gradient (grad None,
    the trainer zeroes with set_to_none), and AdamW skips a parameter whose grad is None entirely, its weight
    decay included. Build the optimizer after on_epoch_start and the frozen parameters are left out of it for
    good. Parameters frozen before the unfreezer was made (freeze_lower_layers) stay frozen."""

    def __init__(self, model: nn.Module, epochs_per_layer: int = 1):
        if epochs_per_layer < 1:
            raise ValueError(f"epochs_per_layer must be at least 1, not {epochs_per_layer}")
        encoder = find_encoder(model)
        self.epochs_per_layer = epochs_per_layer
        self.head = _head_params(model, encoder)
        self.parts = [(name, ps) for name, ps in reversed(_encoder_parts(encoder)) if ps]  # top down
        self.allowed = {id(p) for p in model.parameters() if p.requires_grad}
        self.trainable: list[str] = []

    def trainable_at(self, epoch: int) -> list[str]:
        """The parts trainable during `epoch`, top down."""
        k = epoch // self.epochs_per_layer + 1
        return (["head"] if self.head else []) + [name for name, _ in self.parts[:k]]

    def on_epoch_start(self, epoch: int) -> list[str]:
        """Set requires_grad for `epoch` (whatever the previous epoch was, so resuming works); returns the parts
        that became trainable."""
        names = self.trainable_at(epoch)
        for name, params in [("head", self.head), *self.parts]:
            for p in params:
                p.requires_grad_(name in names and id(p) in self.allowed)
        new = [n for n in names if n not in self.trainable]
        self.trainable = names
        return new


# -- distillation ------------------------------------------------------------------------------------------


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015: T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), mean over examples.

    Logits (..., C); every row is an example ("batchmean" over all leading dimensions). The teacher's soft
    targets are detached. The gradient of the softened KL with respect to z_s scales as 1 / T^2, so the T^2
    factor keeps its size comparable across temperatures and next to a hard-label loss (section 2). The student
    is used at T = 1 afterwards, with the plain softmax."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}")
    c = student_logits.size(-1)
    log_p_s = F.log_softmax(student_logits.float().reshape(-1, c) / temperature, dim=-1)  # (rows, C)
    log_p_t = F.log_softmax(teacher_logits.detach().float().reshape(-1, c) / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def cosine_alignment_loss(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """DistilBERT's L_cos (Sanh et al. 2019, section 3): 1 - cos(h_s, h_t), mean over the real tokens.

    hidden (B, T, D); mask (B, T) bool, True at real tokens (None: every token). The teacher is detached."""
    teacher_hidden = teacher_hidden.detach()
    if mask is not None:
        student_hidden, teacher_hidden = student_hidden[mask], teacher_hidden[mask]  # (N, D)
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    return (1.0 - cos).mean()


def distilbert_loss(student_mlm_logits: Tensor, teacher_mlm_logits: Tensor, labels_at_masked: Tensor,
                    student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None,
                    temperature: float = 2.0, weights: tuple[float, float, float] = (5.0, 2.0, 1.0)
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """DistilBERT's triple loss (Sanh et al. 2019): alpha_ce L_ce + alpha_mlm L_mlm + alpha_cos L_cos.

        L_ce    distillation_loss on the M masked positions, MLM logits (M, V)
        L_mlm   cross-entropy of the student to the true tokens labels_at_masked (M,) (-100: ignored)
        L_cos   cosine_alignment_loss of the last hidden states (B, T, D) over the real tokens (mask (B, T))
    weights = (alpha_ce, alpha_mlm, alpha_cos), the paper's training code uses (5, 2, 1).
    Returns (total, {"ce": L_ce, "mlm": L_mlm, "cos": L_cos}) with the parts unweighted."""
    l_ce = distillation_loss(student_mlm_logits, teacher_mlm_logits, temperature)
    l_mlm = F.cross_entropy(student_mlm_logits.float(), labels_at_masked, ignore_index=-100)
    l_cos = cosine_alignment_loss(student_hidden, teacher_hidden, mask)
    a_ce, a_mlm, a_cos = weights
    total = a_ce * l_ce + a_mlm * l_mlm + a_cos * l_cos
    return total, {"ce": l_ce, "mlm": l_mlm, "cos": l_cos}


Model = TypeVar("Model", BertModel, BertForPreTraining)


def student_from_teacher(teacher: Model, every: int = 2) -> Model:
    """A shallower copy of the teacher: ceil(N / every) layers, student layer i (0-based) initialised from teacher
    layer i * every; embeddings, pooler and pretraining heads copied (DistilBERT, Sanh et al. 2019, section 3:
    "initialize the student from the teacher by taking one layer out of two").

    The student is built with its class's constructor and loaded with state dicts, so it owns its tensors and
    the MLM head's output matrix is tied to the student's own token embedding. A shared encoder (ALBERT) keeps its
    one layer, applied fewer times. Same device, dtype and train/eval mode as the teacher."""
    from tformer.models.heads import EncoderForTask

    if isinstance(teacher, EncoderForTask):  # a fine-tuned teacher: its encoder halved, its head copied
        student = EncoderForTask(student_from_teacher(teacher.bert, every), teacher.head_config)
        student.head.load_state_dict(teacher.head.state_dict())
        first = next(teacher.parameters())
        return student.to(device=first.device, dtype=first.dtype).train(teacher.training)
    if not isinstance(teacher, (BertModel, BertForPreTraining)):
        raise TypeError(f"student_from_teacher takes a BertModel, BertForPreTraining or EncoderForTask, "
                        f"not {type(teacher).__name__}")
    if every < 1:
        raise ValueError(f"every must be at least 1, not {every}")
    t_enc = find_encoder(teacher)
    n_layers = math.ceil(t_enc.config.n_layers / every)
    config = replace(teacher.config, n_layers=n_layers)
    student = type(teacher)(config)
    s_enc = find_encoder(student)

    # Everything but the layers, by name; then the chosen layers one by one.
    layer_prefix = next(name for name, m in teacher.named_modules() if m is t_enc.encoder.layers) + "."
    rest = {k: v for k, v in teacher.state_dict().items() if not k.startswith(layer_prefix)}
    missing, unexpected = student.load_state_dict(rest, strict=False)
    if unexpected or any(not k.startswith(layer_prefix) for k in missing):
        raise RuntimeError(f"teacher and student disagree outside the layers: {missing}, {unexpected}")
    if _is_shared(t_enc):
        s_enc.encoder.layers[0].load_state_dict(t_enc.encoder.layers[0].state_dict())
    else:
        for i, layer in enumerate(s_enc.encoder.layers):
            layer.load_state_dict(t_enc.encoder.layers[i * every].state_dict())
    s_enc.unpad = t_enc.unpad
    first = next(teacher.parameters())
    return student.to(device=first.device, dtype=first.dtype).train(teacher.training)


__all__ = ["find_encoder", "freeze", "unfreeze", "encoder_layers", "freeze_lower_layers", "freeze_encoder",
           "layerwise_parameter_groups", "make_optimizer", "GradualUnfreezer", "EarlyStopping", "distillation_loss",
           "cosine_alignment_loss", "distilbert_loss", "student_from_teacher"]
