"""Losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross-entropy with a hand-written backward.

    d loss / d logits = softmax(logits) - (1 - epsilon) * onehot(target) - epsilon / V, so the backward
    needs one (N, V) buffer instead of the several that autograd keeps for log_softmax, gather and mean;
    over an 8k-word vocabulary that is a fifth of a training step on a CPU.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float):
        # log_softmax is one fused pass; torch.logsumexp with a broadcast subtraction is several times slower.
        lprobs = torch.log_softmax(logits, dim=-1)
        nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        smooth = -lprobs.mean(dim=-1)  # mean_k(-log p_k)
        loss = (1.0 - epsilon) * nll + epsilon * smooth
        ctx.save_for_backward(lprobs, target)
        ctx.epsilon = epsilon
        nll_sum = nll.sum()
        ctx.mark_non_differentiable(nll_sum)
        return loss.sum(), nll_sum

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        lprobs, target = ctx.saved_tensors
        eps = ctx.epsilon
        # softmax, written over the saved log-probabilities: they are not needed again, and a fresh
        # (N, V) buffer costs more in page faults than the exponentials themselves.
        grad = lprobs.exp_()
        grad.sub_(eps / lprobs.size(-1))
        grad.scatter_add_(-1, target.unsqueeze(-1), grad.new_full((target.numel(), 1), -(1.0 - eps)))
        return grad.mul_(grad_loss), None, None


def label_smoothed_cross_entropy(logits: Tensor, target: Tensor, epsilon: float = 0.1,
                                 ignore_index: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy against a smoothed target (Szegedy et al. 2016; Vaswani et al. 2017, section 5.4).

    The target puts 1 - epsilon on the true token and spreads epsilon uniformly over the vocabulary:
        loss = (1 - epsilon) * (-log p_y) + epsilon * mean_k(-log p_k)
    Positions whose target is ignore_index (padding) contribute nothing.
    logits (N, V), target (N,) -> (summed loss, summed NLL of the true tokens, number of counted tokens);
    the NLL is what perplexity is made of.
    """
    logits = logits.reshape(-1, logits.size(-1))
    target = target.reshape(-1)
    if ignore_index is not None:
        keep = target != ignore_index
        if not bool(keep.all()):
            logits, target = logits[keep], target[keep]
    loss, nll = _SmoothedCrossEntropy.apply(logits.float(), target, float(epsilon))
    return loss, nll.detach(), torch.tensor(target.numel(), device=target.device)


# -- the output projection and the loss as one operation ------------------------------------------------

FUSED_MIN_VOCAB = 1024  # below this the (N, V) logits are small and the plain path is as fast
FUSED_CHUNK_ELEMENTS = 1 << 22  # logits per chunk (16 MB in fp32): a few chunks fit the last-level cache


def _chunk_rows(vocab_size: int) -> int:
    return max(64, FUSED_CHUNK_ELEMENTS // vocab_size)


class _LinearSmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross-entropy of hidden (N, D) @ weight (V, D)^T, computed in row chunks.

    The whole (N, V) matrix of logits never exists: each chunk's logits become its loss and, right away, its
    gradient d loss / d logits = softmax - (1 - epsilon) onehot - epsilon / V, which is multiplied back into
    d hidden (chunk) and d weight (accumulated). A loss is always the end of the graph, so the gradients can
    be computed in the forward pass for an upstream gradient of 1 and scaled by the real one in backward.
    Same GEMMs as the unfused path; what it saves is writing, re-reading and page-faulting three (N, V)
    buffers: on a CPU with an 8k vocabulary, about a sixth of the projection-plus-loss time.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float):
        n, v = hidden.size(0), weight.size(0)
        h, w = hidden.detach(), weight.detach()
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(h) if need_grad else None
        # softmax and sums over chunks in fp32 at least, whatever the parameters' dtype
        acc_dtype = torch.promote_types(w.dtype, torch.float32)
        grad_weight = torch.zeros(w.shape, dtype=acc_dtype, device=w.device) if need_grad else None
        loss = h.new_zeros((), dtype=acc_dtype)
        nll_sum = h.new_zeros((), dtype=acc_dtype)
        rows = _chunk_rows(v)
        for start in range(0, n, rows):
            h_c, t_c = h[start : start + rows], target[start : start + rows]
            lprobs = torch.log_softmax(torch.mm(h_c, w.t()).to(acc_dtype), dim=-1)
            nll = lprobs.gather(-1, t_c.unsqueeze(-1)).sum().neg()
            loss += (1.0 - epsilon) * nll - epsilon * lprobs.mean(dim=-1).sum()
            nll_sum += nll
            if need_grad:
                grad = lprobs.exp_()
                grad.sub_(epsilon / v)
                grad.scatter_add_(-1, t_c.unsqueeze(-1), grad.new_full((t_c.numel(), 1), -(1.0 - epsilon)))
                grad = grad.to(h.dtype)
                torch.mm(grad, w, out=grad_hidden[start : start + rows])
                if acc_dtype == h.dtype:
                    grad_weight.addmm_(grad.t(), h_c)
                else:
                    grad_weight += torch.mm(grad.t(), h_c).to(acc_dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_loss.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_weight * grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None


def linear_label_smoothed_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float = 0.1,
                                        ignore_index: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """label_smoothed_cross_entropy(hidden @ weight^T, target, epsilon, ignore_index), the same numbers.

    hidden (N, D) or (..., D), weight (V, D) (an output projection without bias), target (N,) or (...).
    On a CPU with a vocabulary of at least FUSED_MIN_VOCAB words the projection and the loss run fused in
    row chunks (_LinearSmoothedCrossEntropy); elsewhere it is the projection and then the loss.
    """
    hidden = hidden.reshape(-1, hidden.size(-1))
    target = target.reshape(-1)
    if ignore_index is not None:
        keep = target != ignore_index
        if not bool(keep.all()):
            hidden, target = hidden[keep], target[keep]
    if hidden.device.type != "cpu" or weight.size(0) < FUSED_MIN_VOCAB or torch.is_autocast_enabled("cpu"):
        return label_smoothed_cross_entropy(F.linear(hidden, weight), target, epsilon)
    loss, nll = _LinearSmoothedCrossEntropy.apply(hidden, weight, target, float(epsilon))
    return loss, nll.detach(), torch.tensor(target.numel(), device=target.device)


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean token cross-entropy (no smoothing), for validation perplexity."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1), ignore_index=ignore_index)
