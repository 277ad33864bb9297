"""Contrastive loss for the dual encoder: each query's positive against every passage of the
batch (its hard negatives and the other queries' passages), softmax cross-entropy.

With `gather=True` under torch.distributed (as set up by `accelerate launch`), passages of
all processes are gathered so each query also sees theirs. The gather is differentiable:
its backward sums every process's gradient for a passage back to the process that owns it,
so the gradient averaged by DDP is exactly that of the global mean loss.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def contrastive_loss(queries: torch.Tensor, passages: torch.Tensor, targets: torch.Tensor | None = None,
                     temperature: float = 1.0, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over queries of -log softmax(q . p / temperature)[target].

    `queries` [Q, d], `passages` [P, d]; `targets` [Q] (default: query i's positive is
    passage i * P // Q, the group-major layout of `TaskBatch`); `exclude` [Q, P] bool
    removes passages from a query's softmax (never its target).
    """
    if queries.dim() != 2 or passages.dim() != 2 or queries.shape[1] != passages.shape[1]:
        raise ValueError(f"expected queries [Q, d] and passages [P, d], got {tuple(queries.shape)} "
                         f"and {tuple(passages.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n_queries, n_passages = queries.shape[0], passages.shape[0]
    if targets is None:
        if n_passages % n_queries:
            raise ValueError(f"{n_passages} passages do not split into groups for {n_queries} queries; pass targets")
        targets = torch.arange(n_queries, device=queries.device) * (n_passages // n_queries)
    scores = queries.float() @ passages.float().T / temperature
    if exclude is not None:
        exclude = exclude.to(scores.device)
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude has shape {tuple(exclude.shape)}, scores {tuple(scores.shape)}")
        if exclude.gather(1, targets[:, None]).any():
            raise ValueError("exclude masks a query's own positive")
        scores = scores.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(scores, targets)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward all-reduces (sums) the gradient and keeps this
    process's slice; works on every backend (gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Rows of `tensor` from every process (rank order), differentiable; itself when not distributed.
    Every process must pass the same shape."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


class ContrastiveLoss:
    """In-batch + hard-negative softmax cross-entropy, optionally over all processes' passages."""

    def __init__(self, temperature: float = 1.0, gather: bool = False):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather = gather

    def __call__(self, queries: torch.Tensor, passages: torch.Tensor,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of this process's queries; `exclude` [Q, P_local] is this process's mask."""
        n_queries, n_local = queries.shape[0], passages.shape[0]
        if n_local % n_queries:
            raise ValueError(f"{n_local} passages do not split into groups for {n_queries} queries")
        group = n_local // n_queries
        all_passages = gather_with_grad(passages) if self.gather else passages
        offset = 0
        if all_passages is not passages:
            offset = dist.get_rank() * n_local
            if exclude is not None:  # other processes' gold pages are unknown here: keep them
                full = torch.zeros(n_queries, all_passages.shape[0], dtype=torch.bool, device=exclude.device)
                full[:, offset:offset + n_local] = exclude
                exclude = full
        targets = offset + torch.arange(n_queries, device=queries.device) * group
        return contrastive_loss(queries, all_passages, targets, self.temperature, exclude)
