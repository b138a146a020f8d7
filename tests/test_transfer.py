"""Transfer-learning strategies (tformer.transfer) and ULMFiT's schedule, on tiny encoders."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tformer import transfer
from tformer.models.bert import BertConfig, BertForPreTraining, BertModel
from tformer.training.optim import make_adam
from tformer.training.schedules import slanted_triangular_lr

TINY = BertConfig(vocab_size=50, d_model=32, n_heads=2, n_layers=4, d_ff=64, max_len=32, dropout=0.0,
                  attention_dropout=0.0)


class Classifier(nn.Module):
    """A pretrained encoder and a new head, as a fine-tuning model holds them."""

    def __init__(self, config: BertConfig = TINY, attr: str = "bert"):
        super().__init__()
        setattr(self, attr, BertModel(config))
        self.attr = attr
        self.head = nn.Linear(config.d_model, 3)

    def forward(self, ids):
        return self.head(getattr(self, self.attr)(ids).pooled)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, TINY.vocab_size, (4, 10), generator=g), torch.randint(0, 3, (4,), generator=g)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int = 0) -> None:
    ids, labels = batch(seed)
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(ids), labels).backward()
    optimizer.step()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(module: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """True when every parameter of the module moved."""
    return all(not torch.equal(p, before[k]) for k, p in module.named_parameters())


def unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[k]) for k, p in module.named_parameters())


# -- freezing ----------------------------------------------------------------------------------------------


def test_find_encoder_and_layers():
    torch.manual_seed(0)
    pre = BertForPreTraining(TINY)
    assert transfer.find_encoder(pre) is pre.bert
    assert transfer.find_encoder(pre.bert) is pre.bert
    wrapped = Classifier(attr="encoder")
    assert transfer.find_encoder(wrapped) is wrapped.encoder
    with pytest.raises(TypeError, match="holds none"):
        transfer.find_encoder(nn.Linear(2, 2))
    layers = transfer.encoder_layers(pre)
    assert layers[0] is pre.bert.embeddings
    assert layers[1:] == list(pre.bert.encoder.layers) and len(layers) == TINY.n_layers + 1


def test_frozen_lower_layers_do_not_move_and_the_rest_does():
    torch.manual_seed(0)
    model = Classifier()
    assert transfer.freeze_lower_layers(model, 2) == ["embeddings", "layer1", "layer2"]
    enc = model.bert
    assert not any(p.requires_grad for p in enc.embeddings.parameters())
    trainable = [all(p.requires_grad for p in layer.parameters()) for layer in enc.encoder.layers]
    assert trainable == [False, False, True, True]
    # an optimizer over every parameter, with weight decay: the frozen ones still do not move
    optimizer = make_adam(model, weight_decay=0.1, groups=[{"params": list(model.parameters()), "weight_decay": 0.1}])
    for g in optimizer.param_groups:
        g["lr"] = 1e-2
    before = {name: snapshot(m) for name, m in
              [("emb", enc.embeddings), *[(f"l{i}", m) for i, m in enumerate(enc.encoder.layers)],
               ("pooler", enc.pooler), ("head", model.head)]}
    train_step(model, optimizer)
    assert unchanged(enc.embeddings, before["emb"])
    assert unchanged(enc.encoder.layers[0], before["l0"]) and unchanged(enc.encoder.layers[1], before["l1"])
    assert changed(enc.encoder.layers[2], before["l2"]) and changed(enc.encoder.layers[3], before["l3"])
    assert changed(enc.pooler, before["pooler"]) and changed(model.head, before["head"])


def test_freeze_lower_layers_bounds_and_shared_encoder():
    torch.manual_seed(0)
    model = Classifier()
    assert transfer.freeze_lower_layers(model, 0) == []
    assert all(p.requires_grad for p in model.parameters())
    for n in (-1, 5):
        with pytest.raises(ValueError, match="can freeze 0 to 4"):
            transfer.freeze_lower_layers(model, n)
    albert = Classifier(replace(TINY, share_layers=True))
    with pytest.raises(ValueError, match="shares one layer"):
        transfer.freeze_lower_layers(albert, 2)
    assert all(p.requires_grad for p in albert.parameters())  # nothing frozen by the refused call
    transfer.freeze_lower_layers(albert, 4)
    assert not any(p.requires_grad for p in albert.bert.encoder.parameters())
    assert all(p.requires_grad for p in albert.head.parameters())


def test_freeze_encoder_and_unfreeze():
    torch.manual_seed(0)
    model = Classifier()
    transfer.freeze_encoder(model)
    assert not any(p.requires_grad for p in model.bert.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model(batch()[0]).sum().backward()
    assert all(p.grad is None for p in model.bert.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    transfer.unfreeze(model.bert)
    assert all(p.requires_grad for p in model.parameters())


# -- discriminative learning rates -------------------------------------------------------------------------


def scales_by_param(groups: list[dict]) -> dict[int, float]:
    out: dict[int, float] = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, "a parameter in two groups"
            out[id(p)] = g["lr_scale"]
    return out


def test_layerwise_groups_scale_every_layer():
    torch.manual_seed(0)
    model = Classifier()
    groups = transfer.layerwise_parameter_groups(model, head_lr_scale=2.0, encoder_lr_scale=0.5, layer_decay=0.25,
                                                 weight_decay=0.01)
    scale = scales_by_param(groups)
    assert set(scale) == {id(p) for p in model.parameters()}
    enc = model.bert
    for p in model.head.parameters():
        assert scale[id(p)] == 2.0
    for l, layer in enumerate(enc.encoder.layers, start=1):
        for p in layer.parameters():
            assert scale[id(p)] == pytest.approx(0.5 * 0.25 ** (4 - l))
    for p in enc.pooler.parameters():
        assert scale[id(p)] == 0.5  # with the top layer
    for p in enc.embeddings.parameters():
        assert scale[id(p)] == pytest.approx(0.5 * 0.25**4)
    # weight decay: matrices only
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    layer = enc.encoder.layers[0]
    assert wd[id(layer.ff.w1.weight)] == 0.01 and wd[id(layer.self_attn.in_proj.weight)] == 0.01
    assert all(wd[id(p)] == 0.0 for p in layer.attn_block.norm.parameters())
    assert all(wd[id(p)] == 0.0 for n, p in model.named_parameters() if n.endswith("bias"))
    assert wd[id(enc.embeddings.tok_embed.weight)] == 0.0 and wd[id(model.head.weight)] == 0.01
    assert all(isinstance(g["name"], str) and g["name"] for g in groups)


def test_layerwise_groups_ulmfit_decay_frozen_and_merging():
    torch.manual_seed(0)
    model = Classifier()
    transfer.freeze_lower_layers(model, 1)
    groups = transfer.layerwise_parameter_groups(model, layer_decay=1 / 2.6)
    scale = scales_by_param(groups)
    assert set(scale) == {id(p) for p in model.parameters() if p.requires_grad}
    top, below = model.bert.encoder.layers[3].ff_block.norm.weight, model.bert.encoder.layers[2].ff_block.norm.weight
    assert scale[id(top)] / scale[id(below)] == pytest.approx(2.6)
    # all scales 1, no decay: a single group
    plain = transfer.layerwise_parameter_groups(Classifier(), weight_decay=0.0)
    assert len(plain) == 1 and plain[0]["lr_scale"] == 1.0


def test_layerwise_groups_shared_parameters_once():
    torch.manual_seed(0)
    albert = Classifier(replace(TINY, share_layers=True))
    groups = transfer.layerwise_parameter_groups(albert, layer_decay=0.5)
    scale = scales_by_param(groups)
    assert len(scale) == len(list(albert.parameters()))
    assert all(scale[id(p)] == 1.0 for p in albert.bert.encoder.layers[0].parameters())  # the top layer's
    assert all(scale[id(p)] == 0.5**4 for p in albert.bert.embeddings.parameters())
    pre = BertForPreTraining(TINY)  # the MLM head's output matrix is the token embedding, counted once
    groups = transfer.layerwise_parameter_groups(pre, head_lr_scale=3.0, encoder_lr_scale=1.0)
    scale = scales_by_param(groups)
    assert scale[id(pre.bert.embeddings.tok_embed.weight)] == 1.0 and scale[id(pre.mlm_head.bias)] == 3.0


def test_make_optimizer_initial_rates():
    torch.manual_seed(0)
    model = Classifier()
    groups = transfer.layerwise_parameter_groups(model, head_lr_scale=1.0, encoder_lr_scale=0.1, layer_decay=0.5)
    optimizer = transfer.make_optimizer(groups, lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
    assert "lr" not in groups[0]  # the caller's groups are not modified
    before = snapshot(model.head)
    train_step(model, optimizer)
    assert changed(model.head, before)


# -- slanted triangular learning rate ----------------------------------------------------------------------


def test_slanted_triangular_formula():
    peak, total = 0.01, 1000  # cut = 100
    assert slanted_triangular_lr(0, total, peak) == pytest.approx(peak / 32)
    assert slanted_triangular_lr(100, total, peak) == pytest.approx(peak)
    assert slanted_triangular_lr(total, total, peak) == pytest.approx(peak / 32)
    assert slanted_triangular_lr(50, total, peak) == pytest.approx(peak * (1 + 0.5 * 31) / 32)
    # decay: p = 1 - (t - cut) / (cut * (1 / cut_frac - 1)) = 1 - 450 / 900
    assert slanted_triangular_lr(550, total, peak) == pytest.approx(peak * (1 + 0.5 * 31) / 32)
    lrs = [slanted_triangular_lr(t, total, peak, cut_frac=0.2, ratio=10) for t in range(total + 1)]
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 200
    assert all(a < b for a, b in zip(lrs[:200], lrs[1:201])) and all(a > b for a, b in zip(lrs[200:], lrs[201:]))
    assert lrs[0] == pytest.approx(peak / 10) and lrs[-1] == pytest.approx(peak / 10)
    assert slanted_triangular_lr(5000, total, peak) == pytest.approx(peak / 32)  # past T: stays at the floor
    for bad in (dict(cut_frac=0.0), dict(cut_frac=1.0), dict(ratio=0.5)):
        with pytest.raises(ValueError):
            slanted_triangular_lr(1, total, peak, **bad)


# -- gradual unfreezing ------------------------------------------------------------------------------------


def pattern(model: Classifier) -> list[bool]:
    """Trainable? for [embeddings, layer1..layer4, pooler, head]."""
    enc = model.bert
    modules = [enc.embeddings, *enc.encoder.layers, enc.pooler, model.head]
    out = []
    for m in modules:
        flags = {p.requires_grad for p in m.parameters()}
        assert len(flags) == 1, "a module half frozen"
        out.append(flags.pop())
    return out


def test_gradual_unfreezing_pattern_per_epoch():
    torch.manual_seed(0)
    model = Classifier()
    unfreezer = transfer.GradualUnfreezer(model)
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen before the first epoch
    assert unfreezer.on_epoch_start(0) == ["head", "layer4"]
    assert pattern(model) == [False, False, False, False, True, True, True]
    assert unfreezer.on_epoch_start(1) == ["layer3"]
    assert pattern(model) == [False, False, False, True, True, True, True]
    assert unfreezer.on_epoch_start(2) == ["layer2"]
    assert unfreezer.on_epoch_start(3) == ["layer1"]
    assert unfreezer.on_epoch_start(4) == ["embeddings"]
    assert pattern(model) == [True] * 7
    assert unfreezer.on_epoch_start(9) == []
    # resuming at epoch 2 sets the whole pattern at once
    fresh = Classifier()
    assert transfer.GradualUnfreezer(fresh).on_epoch_start(2) == ["head", "layer4", "layer3", "layer2"]
    assert pattern(fresh) == [False, False, True, True, True, True, True]
    # two epochs per layer
    slow = Classifier()
    u = transfer.GradualUnfreezer(slow, epochs_per_layer=2)
    assert u.on_epoch_start(0) == ["head", "layer4"] and u.on_epoch_start(1) == [] and u.on_epoch_start(2) == ["layer3"]


def test_gradual_unfreezing_keeps_earlier_freezing_and_shared_encoder():
    torch.manual_seed(0)
    model = Classifier()
    transfer.freeze_lower_layers(model, 1)
    unfreezer = transfer.GradualUnfreezer(model)
    unfreezer.on_epoch_start(10)
    assert pattern(model) == [False, False, True, True, True, True, True]
    albert = Classifier(replace(TINY, share_layers=True))
    u = transfer.GradualUnfreezer(albert)
    assert u.on_epoch_start(0) == ["head", "layer4"]
    assert not any(p.requires_grad for p in albert.bert.embeddings.parameters())
    assert u.on_epoch_start(1) == ["embeddings"]
    assert all(p.requires_grad for p in albert.parameters())


def test_optimizer_built_once_skips_frozen_parameters_with_weight_decay():
    """AdamW skips a parameter whose grad is None: no Adam update and no decoupled weight decay either."""
    torch.manual_seed(0)
    model = Classifier()
    optimizer = transfer.make_optimizer(transfer.layerwise_parameter_groups(model, weight_decay=0.5), lr=1e-2)
    unfreezer = transfer.GradualUnfreezer(model)
    enc = model.bert
    unfreezer.on_epoch_start(0)
    before = {i: snapshot(m) for i, m in enumerate([enc.embeddings, *enc.encoder.layers, model.head])}
    train_step(model, optimizer)
    assert unchanged(enc.embeddings, before[0]) and unchanged(enc.encoder.layers[2], before[3])
    assert changed(enc.encoder.layers[3], before[4]) and changed(model.head, before[5])
    unfreezer.on_epoch_start(1)
    train_step(model, optimizer, seed=1)
    assert changed(enc.encoder.layers[2], before[3]) and unchanged(enc.encoder.layers[1], before[2])


# -- early stopping ----------------------------------------------------------------------------------------


def test_early_stopping_max_and_min():
    stop = transfer.EarlyStopping(patience=2, mode="max")
    decisions = []
    bests = []
    for value in [0.5, 0.6, 0.55, 0.7, 0.65, 0.7, 0.69]:
        decisions.append(stop.update(value))
        bests.append(stop.is_best)
    assert decisions == [False, False, False, False, False, True, True]
    assert bests == [True, True, False, True, False, False, False]  # a tie is no improvement
    assert stop.best == 0.7 and stop.best_step == 3
    low = transfer.EarlyStopping(patience=1, mode="min", min_delta=0.1)
    assert not low.update(2.0, step=100) and low.is_best
    assert not low.update(1.5, step=200) and low.best_step == 200
    assert low.update(1.45, step=300) and not low.is_best and low.best == 1.5  # within min_delta
    nan = transfer.EarlyStopping(patience=1)
    assert nan.update(float("nan")) and nan.best is None
    with pytest.raises(ValueError):
        transfer.EarlyStopping(patience=0)
    with pytest.raises(ValueError):
        transfer.EarlyStopping(patience=1, mode="best")


# -- distillation ------------------------------------------------------------------------------------------


def test_distillation_loss_matches_hand_computation():
    torch.manual_seed(0)
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(6, 5, requires_grad=True)
    assert transfer.distillation_loss(t.detach(), t.detach(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    for temperature in (1.0, 2.0, 4.0):
        p_t = torch.softmax(t / temperature, -1)
        hand = (p_t * (torch.log(p_t) - torch.log_softmax(s / temperature, -1))).sum(-1).mean() * temperature**2
        got = transfer.distillation_loss(s, t, temperature)
        assert got.item() == pytest.approx(hand.item(), rel=1e-5)
    got.backward()
    assert t.grad is None and s.grad is not None  # the soft targets are detached
    # 3-D logits: every row an example
    s3, t3 = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    assert transfer.distillation_loss(s3, t3, 2.0).item() == pytest.approx(
        transfer.distillation_loss(s3.reshape(6, 5), t3.reshape(6, 5), 2.0).item())
    with pytest.raises(ValueError):
        transfer.distillation_loss(s, t, 0.0)


def test_distillation_gradient_size_independent_of_temperature():
    """Hinton et al. 2015: for large T the gradient tends to (z_s - z_t) / (C T^2) per example; times T^2 it
    no longer depends on T."""
    torch.manual_seed(0)
    t = torch.randn(8, 10)
    t = t - t.mean(-1, keepdim=True)
    student = t + 0.5 * torch.randn(8, 10)
    norms = []
    for temperature in (5.0, 10.0, 20.0):
        s = student.clone().requires_grad_(True)
        transfer.distillation_loss(s, t, temperature).backward()
        norms.append(s.grad.norm().item())
    assert max(norms) / min(norms) < 1.1  # without the T^2 factor: 16x smaller at T=20 than at T=5


def test_cosine_alignment_loss_real_tokens_only():
    torch.manual_seed(0)
    h = torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert transfer.cosine_alignment_loss(2 * h, h, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert transfer.cosine_alignment_loss(-h, h, mask).item() == pytest.approx(2.0)
    other = h.clone()
    other[~mask] = -h[~mask]  # padding disagrees, and is not counted
    assert transfer.cosine_alignment_loss(other, h, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert transfer.cosine_alignment_loss(other, h, None).item() == pytest.approx(2.0 * 3 / 8)
    s = torch.randn(2, 4, 8)
    hand = (1 - F.cosine_similarity(s[mask], h[mask], dim=-1)).mean()
    assert transfer.cosine_alignment_loss(s, h, mask).item() == pytest.approx(hand.item())


def test_distilbert_loss_weighted_sum():
    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(5, 50, requires_grad=True), torch.randn(5, 50)
    labels = torch.tensor([1, 2, 3, -100, 4])
    s_hidden, t_hidden = torch.randn(2, 4, 8, requires_grad=True), torch.randn(2, 4, 8)
    mask = torch.ones(2, 4, dtype=torch.bool)
    total, parts = transfer.distilbert_loss(s_logits, t_logits, labels, s_hidden, t_hidden, mask)
    assert parts["ce"].item() == pytest.approx(transfer.distillation_loss(s_logits, t_logits, 2.0).item())
    assert parts["mlm"].item() == pytest.approx(F.cross_entropy(s_logits[[0, 1, 2, 4]], labels[[0, 1, 2, 4]]).item())
    assert parts["cos"].item() == pytest.approx(transfer.cosine_alignment_loss(s_hidden, t_hidden, mask).item())
    assert total.item() == pytest.approx(5 * parts["ce"].item() + 2 * parts["mlm"].item() + parts["cos"].item(),
                                         rel=1e-5)
    total.backward()
    assert s_logits.grad is not None and s_hidden.grad is not None
    total2, _ = transfer.distilbert_loss(s_logits, t_logits, labels, s_hidden, t_hidden, mask, weights=(0, 0, 1))
    assert total2.item() == pytest.approx(parts["cos"].item())


def test_student_from_teacher_pretraining_model():
    torch.manual_seed(0)
    teacher = BertForPreTraining(replace(TINY, n_layers=5))
    student = transfer.student_from_teacher(teacher, every=2)
    assert type(student) is BertForPreTraining and student.config.n_layers == 3
    assert student.config == replace(teacher.config, n_layers=3)
    for i, layer in enumerate(student.bert.encoder.layers):
        chosen = teacher.bert.encoder.layers[2 * i].state_dict()
        assert all(torch.equal(v, chosen[k]) for k, v in layer.state_dict().items())
    t_rest = {k: v for k, v in teacher.state_dict().items() if ".layers." not in k}
    s_rest = {k: v for k, v in student.state_dict().items() if ".layers." not in k}
    assert t_rest.keys() == s_rest.keys() and all(torch.equal(v, t_rest[k]) for k, v in s_rest.items())
    # the MLM output matrix is tied to the student's own token embedding
    assert student.mlm_head.embedding[0] is student.bert.embeddings.tok_embed
    assert student.mlm_head.embedding[0] is not teacher.bert.embeddings.tok_embed
    # an independent copy
    teacher_tok = teacher.bert.embeddings.tok_embed.weight.detach().clone()
    teacher_l0 = teacher.bert.encoder.layers[0].ff_block.norm.weight.detach().clone()
    with torch.no_grad():
        student.bert.embeddings.tok_embed.weight.add_(1.0)
        student.bert.encoder.layers[0].ff_block.norm.weight.add_(1.0)
    assert torch.equal(teacher.bert.embeddings.tok_embed.weight, teacher_tok)
    assert torch.equal(teacher.bert.encoder.layers[0].ff_block.norm.weight, teacher_l0)
    ids = batch()[0]
    out_s, out_t = student(ids), teacher(ids)
    assert out_s.mlm_logits.shape == out_t.mlm_logits.shape == (4, 10, 50)
    assert out_s.sentence_logits.shape == out_t.sentence_logits.shape
    assert student.num_parameters() < teacher.num_parameters()


def test_student_from_teacher_encoder():
    torch.manual_seed(0)
    teacher = BertModel(TINY).eval()
    student = transfer.student_from_teacher(teacher)
    assert type(student) is BertModel and len(student.encoder.layers) == 2 and not student.training
    for i, layer in enumerate(student.encoder.layers):
        assert torch.equal(layer.self_attn.out_proj.weight, teacher.encoder.layers[2 * i].self_attn.out_proj.weight)
        assert not torch.equal(layer.ff.w1.weight, teacher.encoder.layers[1].ff.w1.weight)
    same = transfer.student_from_teacher(teacher, every=1)  # every layer kept: the same function
    ids = batch()[0]
    torch.testing.assert_close(same(ids).hidden, teacher(ids).hidden)
    assert not torch.allclose(student(ids).hidden, teacher(ids).hidden)
    with pytest.raises(TypeError):
        transfer.student_from_teacher(Classifier())
    assert math.ceil(4 / 3) == len(transfer.student_from_teacher(teacher, every=3).encoder.layers)
