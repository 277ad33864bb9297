"""Multitask gradient combination: each task's gradient is observed after its own backward
pass, and one combined gradient is written back for the optimiser step.

    combiner = make_combiner("taco", model.parameters(), num_tasks=K)
    for t in range(K):
        model.zero_grad(); losses[t].backward(); combiner.observe(t)
    combiner.apply()      # p.grad now holds the combined gradient
    optimizer.step()

Every method (``naive``, ``taco``, ``pcgrad``, ``cgd``) implements :class:`GradientCombiner`,
so the trainer and any user loop treat them alike.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable

import torch
from torch import nn


class GradientCombiner(ABC):
    """Reads each task's ``p.grad`` (``observe``) and writes one combined gradient (``apply``)."""

    def __init__(self, params: Iterable[nn.Parameter], num_tasks: int):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters to combine gradients for")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.steps = 0
        self._observed: set[int] = set()

    def _grads(self) -> list[torch.Tensor]:
        """The current ``p.grad`` of every parameter (zeros where a task left none)."""
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def observe(self, task: int) -> None:
        """Take task ``task``'s gradient from ``p.grad`` (call once per task and step)."""
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task {task} out of range for {self.num_tasks} tasks")
        if task in self._observed:
            raise RuntimeError(f"task {task} observed twice in one step")
        self._observed.add(task)
        self._observe(task, self._grads())

    def apply(self) -> None:
        """Write the combined gradient into ``p.grad`` and count one step."""
        if not self._observed:
            raise RuntimeError("apply() before any observe()")
        combined = self._combine()
        for p, g in zip(self.params, combined):
            p.grad = g
        self._observed.clear()
        self.steps += 1

    @abstractmethod
    def _observe(self, task: int, grads: list[torch.Tensor]) -> None: ...

    @abstractmethod
    def _combine(self) -> list[torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])


class NaiveSum(GradientCombiner):
    """Plain multitask training: g = sum_t g_t / K, streamed (one gradient copy)."""

    def __init__(self, params: Iterable[nn.Parameter], num_tasks: int):
        super().__init__(params, num_tasks)
        self._sum: list[torch.Tensor] | None = None

    def _observe(self, task: int, grads: list[torch.Tensor]) -> None:
        if self._sum is None:
            self._sum = [g.detach().clone() for g in grads]
        else:
            for s, g in zip(self._sum, grads):
                s.add_(g)

    def _combine(self) -> list[torch.Tensor]:
        assert self._sum is not None
        out = [s.div_(self.num_tasks) for s in self._sum]
        self._sum = None
        return out


COMBINERS: dict[str, type[GradientCombiner]] = {"naive": NaiveSum}


def make_combiner(method: str, params: Iterable[nn.Parameter], num_tasks: int, **options: Any) -> GradientCombiner:
    """The combiner registered as ``method`` (naive, taco, pcgrad, cgd)."""
    try:
        cls = COMBINERS[method]
    except KeyError:
        raise ValueError(f"unknown multitask method {method!r}; known: {', '.join(COMBINERS)}") from None
    return cls(params, num_tasks, **options)
