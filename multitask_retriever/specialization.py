"""Multitask gradient combination: each task's gradient is observed after its own backward
pass, and one combined gradient is written back for the optimiser step.

    combiner = make_combiner("taco", model.parameters(), num_tasks=K)
    for t in range(K):
        model.zero_grad(); losses[t].backward(); combiner.observe(t)
    combiner.apply()      # p.grad now holds the combined gradient
    optimizer.step()

Every method (``naive``, ``taco``, ``pcgrad``, ``cgd``) implements :class:`GradientCombiner`,
so the trainer and any user loop treat them alike. :class:`TacoConfig` holds TACO's settings
as the trainer, the CLI and the experiment runner share them.
"""
from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import nn


class GradientCombiner(ABC):
    """Reads each task's ``p.grad`` (``observe``) and writes one combined gradient (``apply``)."""

    def __init__(self, params: Iterable[nn.Parameter], num_tasks: int, seed: int = 0):
        """`seed` seeds the combiners that draw random numbers (PCGrad's task order, TACO's
        median sample); deterministic ones keep it unused."""
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters to combine gradients for")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.seed = seed
        self.steps = 0
        #: L2 norm of the gradient the last `apply` wrote (before any clipping)
        self.last_update_norm = 0.0
        self._observed: set[int] = set()
        self._losses: dict[int, float] = {}

    def _grads(self) -> list[torch.Tensor]:
        """The current ``p.grad`` of every parameter (zeros where a task left none)."""
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def observe(self, task: int, loss: float | torch.Tensor | None = None) -> None:
        """Take task ``task``'s gradient from ``p.grad`` (call once per task and step).

        ``loss`` (the task's loss value) is optional; only ``cgd`` needs it.
        """
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task {task} out of range for {self.num_tasks} tasks")
        if task in self._observed:
            raise RuntimeError(f"task {task} observed twice in one step")
        self._observed.add(task)
        if loss is not None:
            self._losses[task] = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self._observe(task, self._grads())

    def apply(self) -> None:
        """Write the combined gradient into ``p.grad`` and count one step."""
        if not self._observed:
            raise RuntimeError("apply() before any observe()")
        combined = self._combine()
        for p, g in zip(self.params, combined):
            p.grad = g
        self.last_update_norm = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.float()) for g in combined])))
        self._observed.clear()
        self._losses.clear()
        self.steps += 1

    def _require_all_tasks(self) -> None:
        """Methods that compare tasks need every task's gradient in every step."""
        missing = sorted(set(range(self.num_tasks)) - self._observed)
        if missing:
            raise RuntimeError(f"apply() before tasks {missing} were observed in this step")

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

    def __init__(self, params: Iterable[nn.Parameter], num_tasks: int, seed: int = 0):
        super().__init__(params, num_tasks, seed)
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


# ----------------------------------------------------------------------------- helpers

_EPS = 1e-12  # TACO's guard against a zero median


def _flat_into(buf: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy ``tensors`` (flattened, in order) into the 1-D ``buf``."""
    offset = 0
    for t in tensors:
        n = t.numel()
        buf[offset:offset + n].copy_(t.detach().reshape(-1))
        offset += n


def _unflat(vec: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Split the 1-D ``vec`` into fresh tensors shaped (and typed) like ``like``."""
    out, offset = [], 0
    for p in like:
        n = p.numel()
        out.append(vec[offset:offset + n].reshape(p.shape).to(p.dtype).clone())
        offset += n
    return out


def _median(values: torch.Tensor, nonzero: bool) -> float:
    """torch.median (lower middle) of a 1-D tensor, of its non-zero entries if `nonzero`; 0 if none."""
    if nonzero:
        values = values[values != 0]
    return float(values.median()) if values.numel() else 0.0


def _stochastic_round_bf16(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Round float32 ``x`` to bfloat16, up or down at random in proportion to the distance.

    Unbiased, which an EMA with beta near 1 needs: nearest rounding drops updates smaller
    than half a bfloat16 step (2**-9 relative), so the average would stall.
    """
    bits = x.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, generator=generator, dtype=torch.int32, device=x.device)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def _weight_stats(w: torch.Tensor) -> tuple[float, float, float, list[float]]:
    """Sums over entries of (entropy in nats, Gini coefficient, top weight > 0.5, each task's
    weight) for task weights ``w`` of shape (K, n), each column summing to one."""
    k = w.shape[0]
    entropy = -(w * torch.log(w.clamp_min(1e-30))).sum(0)
    ranked = torch.sort(w, dim=0).values  # ascending over tasks
    coef = (2 * torch.arange(1, k + 1, dtype=w.dtype, device=w.device) - k - 1).unsqueeze(1)
    gini = (coef * ranked).sum(0) / (k * w.sum(0).clamp_min(1e-30))
    top = (w.max(0).values > 0.5).to(w.dtype)
    return float(entropy.sum()), float(gini.sum()), float(top.sum()), w.sum(1).tolist()


# ----------------------------------------------------------------------------- TACO

MEDIANS = ("nonzero", "all")
#: scale of TACO's weighted update: ``mean`` writes sum_t w_t g_t (the mean task gradient when the
#: weights are uniform, so naive's scale), ``official`` sum_t w_t g_t / K as the official code
SCALES = ("mean", "official")


def _check_taco(beta: float, tau: float, warmup_steps: int, median: str, median_name: str,
                scale: str = "mean") -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if median not in MEDIANS:
        raise ValueError(f"{median_name} must be 'nonzero' or 'all', got {median!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")


@dataclass
class TacoConfig:
    """TACO's settings: the ``taco`` section of TrainConfig and ExperimentConfig (flags ``--taco-*``)."""

    beta: float = field(default=0.999, metadata={"help": "EMA decay of the per-entry task importances"})
    tau: float = field(default=2.0, metadata={"help": "softmax temperature of the task weights"})
    warmup_steps: int = field(default=0, metadata={"help": "first steps with plain averaged gradients"})
    exact: bool = field(default=False, metadata={"help": "TACO's dense K x P update to the letter"})
    median: str = field(default="nonzero", metadata={
        "help": "importance normaliser: median of the non-zero importances (nonzero), or of all "
                "entries as the official code (all; 0 where most entries get no gradient)"})
    scale: str = field(default="mean", metadata={
        "help": "weighted update sum_t w_t g_t at the mean task gradient's scale (mean; uniform weights "
                "give naive's update), or divided by the task count K as the official code (official; "
                "K times smaller than naive's, which a short run does not recover from)"})

    def __post_init__(self) -> None:
        _check_taco(self.beta, self.tau, self.warmup_steps, self.median, "median", self.scale)

    def combiner_options(self) -> dict[str, Any]:
        """The ``taco`` combiner's keyword arguments these settings stand for (``exact`` picks its class)."""
        return {"beta": self.beta, "tau": self.tau, "warmup_steps": self.warmup_steps, "exact": self.exact,
                "median_over": self.median, "scale": self.scale}


class TaskSpecialization(GradientCombiner):
    """TACO (Zhang et al., TACL 2023): each parameter entry weights the tasks by how much it
    matters to them, w_t = softmax_t(E_t / tau), E_t the EMA of median-normalised |theta * g_t|.

    The combiner registered as ``taco``. It has two modes, one class each:
    ``TaskSpecialization(..., exact=True)`` builds an :class:`ExactTaskSpecialization` (the
    update to the letter, K x P gradient copies), else a :class:`StreamedTaskSpecialization`
    (default: no gradient copies). Both take the same options (``ema_dtype`` and
    ``median_sample`` matter to the streamed one only), so one ``taco`` config builds either;
    this base holds the settings, the task-weight diagnostics and the state's common keys.

    Common to both: I_t = |theta * g_t| / (median(I_t) + 1e-12), the median (torch.median's
    lower middle) over the entries where I_t is non-zero (``median_over="nonzero"``, default)
    or over all P (``"all"``, the official code). Why: where most entries get no gradient, as
    the unused vocabulary rows of a BERT-size embedding matrix (52 % of MiniLM's entries), the
    median over all is 0, every I_t becomes ~1e12 times its value, and the softmax hands each
    parameter to a single task from the first step (measured: weight entropy 3e-4 nats in
    every MiniLM layer after 30 steps; with T5-base's 11 % embedding share it stays finite).
    The first ``warmup_steps`` steps write g = sum_t g_t / K; after them
    g = sum_t w_t * g_t (``scale="mean"``, default) or that / K (``scale="official"``).

    Why ``mean``: with uniform weights it is exactly the warm-up's (and naive's) mean gradient,
    so a huge tau gives naive training; ``official`` drops the update K-fold at the end of the
    warm-up, which AdamW's second moment remembers for about 1 / (1 - beta2) steps.

    What the official code (WenzhengZhang/TACO, mt_trainer.py ``taco_backward``) does, checked:
    theta is the parameter value at the time of the step (``param.data`` before the optimiser
    moves it); E is updated with this step's importance *before* the weights are computed;
    the warm-up test is ``global_step < warmup`` with the 0-based count of finished steps;
    every branch (warm-up, weighted, non-finite) divides its sum by K. Its median runs
    over every model parameter, frozen ones as zeros; here only over the trainable ones, and
    by default only over their non-zero importances (above).
    The official code keeps K x P gradient copies and K x P EMAs (plus K x P temporaries).
    """

    #: the mode (set by each subclass, saved in the state)
    exact: bool

    def __new__(cls, *args: Any, **options: Any) -> TaskSpecialization:
        """``TaskSpecialization(...)`` itself builds the class of its ``exact`` option."""
        if cls is TaskSpecialization:
            bound = inspect.signature(TaskSpecialization.__init__).bind(None, *args, **options)
            cls = ExactTaskSpecialization if bound.arguments.get("exact") else StreamedTaskSpecialization
        return super().__new__(cls)

    def __init__(self, params: Iterable[nn.Parameter], num_tasks: int, beta: float = 0.999,
                 tau: float = 2.0, warmup_steps: int = 0, exact: bool | None = None,
                 ema_dtype: torch.dtype = torch.float32, median_sample: int | None = 1 << 16,
                 seed: int = 0, scale: str = "mean", median_over: str = "nonzero"):
        """`exact` None: this class's mode; else it must be this class's mode."""
        super().__init__(params, num_tasks, seed)
        _check_taco(beta, tau, warmup_steps, median_over, "median_over", scale)
        if ema_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"ema_dtype must be torch.float32 or torch.bfloat16, got {ema_dtype}")
        if exact is not None and bool(exact) != self.exact:
            raise ValueError(f"{type(self).__name__} has exact={self.exact}, got exact={exact}")
        self.median_over = median_over
        self.beta, self.tau, self.warmup_steps = beta, tau, warmup_steps
        self.ema_dtype, self.scale = ema_dtype, scale
        self.num_entries = sum(p.numel() for p in self.params)
        self._allocate(median_sample)

    @abstractmethod
    def _allocate(self, median_sample: int | None) -> None:
        """Create the mode's buffers (EMAs, copies) for ``self.params``."""

    @abstractmethod
    def _task_logits(self) -> Iterator[torch.Tensor]:
        """Per parameter tensor, the float32 task logits of the current EMAs, shape (K, numel)."""

    @abstractmethod
    def _buffers_state(self) -> dict[str, Any]:
        """The mode's part of ``state_dict`` (copies of its EMAs, its RNG)."""

    @abstractmethod
    def _load_buffers(self, state: dict[str, Any]) -> None:
        """Restore what ``_buffers_state`` saved."""

    def _divisor(self, weighted: bool) -> float:
        """What the summed task gradients are divided by: K for a plain sum (warm-up, non-finite)
        and for a weighted one under ``scale="official"``, else 1."""
        return 1.0 if weighted and self.scale == "mean" else float(self.num_tasks)

    # -- state and diagnostics
    def task_weights(self) -> list[torch.Tensor]:
        """Per parameter tensor, the softmax task weights of the current EMAs, shape (K, *p.shape)."""
        return [torch.softmax(e, dim=0).reshape(self.num_tasks, *p.shape)
                for p, e in zip(self.params, self._task_logits())]

    def weight_entropy(self) -> float:
        """Mean entropy (nats) of the task weights over all entries: log K when uniform, 0 when
        every entry follows one task."""
        total = 0.0
        for w in self.task_weights():
            w = w.reshape(self.num_tasks, -1)
            total += float(-(w * torch.log(w.clamp_min(1e-30))).sum())
        return total / self.num_entries

    def diagnostics(self, named_params: Iterable[tuple[str, nn.Parameter]] | None = None,
                    depth: int | None = None) -> dict[str, dict[str, Any]]:
        """Per layer: mean entropy (nats) and Gini of the task weights over entries, the share of
        entries whose top task weight exceeds 0.5, and each task's mean weight (task order).

        Layers are parameter tensors (named by ``named_params``, else ``param{i}``) or, with
        ``depth``, module prefixes of ``depth`` dotted components. Gini is the mean absolute
        difference over task pairs / (2 * mean): 0 for uniform weights, (K-1)/K for one task.
        """
        names = {id(p): n for n, p in named_params} if named_params is not None else {}
        sums: dict[str, list] = {}
        for i, (p, w) in enumerate(zip(self.params, self.task_weights())):
            name = names.get(id(p), f"param{i}")
            if depth is not None:
                name = ".".join(name.split(".")[:depth])
            ent, gini, top, per_task = _weight_stats(w.reshape(self.num_tasks, -1).double())
            acc = sums.setdefault(name, [0.0, 0.0, 0.0, 0.0, [0.0] * self.num_tasks])
            for j, v in enumerate((ent, gini, top, float(p.numel()))):
                acc[j] += v
            acc[4] = [a + b for a, b in zip(acc[4], per_task)]
        return {name: {"entropy": e / n, "gini": g / n, "top_share": t / n, "entries": int(n),
                       "task_weights": [x / n for x in per_task]}
                for name, (e, g, t, n, per_task) in sums.items()}

    def buffer_bytes(self) -> int:
        """Bytes of every tensor the combiner holds between calls (EMAs, copies, indices)."""
        return sum(t.numel() * t.element_size() for t in _held_tensors(vars(self), skip=self.params))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "exact": self.exact, **self._buffers_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if bool(state["exact"]) != self.exact:
            raise ValueError(f"state is for exact={state['exact']}, this combiner has exact={self.exact}")
        super().load_state_dict(state)
        self._load_buffers(state)


class ExactTaskSpecialization(TaskSpecialization):
    """TACO's update to the letter (``taco`` with ``exact=True``): all trainable parameters
    flattened into one vector theta of P entries; per step, after all K tasks are observed:

    * I_t = |theta * g_t| / (median(I_t) + 1e-12) (the base's median);
    * finite step: E_t <- beta * E_t + (1 - beta) * I_t (from zero, warm-up steps included);
      then g = sum_t g_t / K while ``steps < warmup_steps``, else
      g = sum_t softmax_t(E_t / tau) * g_t (``scale="mean"``) or that / K (``"official"``);
    * a step where any g_t has a NaN/inf: g = sum_t g_t / K and E is left unchanged.

    Holds K x P gradient copies and K x P float32 EMAs; ``median_sample`` is unused.
    """

    exact = True

    def _allocate(self, median_sample: int | None) -> None:
        if self.ema_dtype != torch.float32:
            raise ValueError("exact=True keeps its EMAs in float32")
        device = self.params[0].device
        self._grad_rows = torch.zeros(self.num_tasks, self.num_entries, device=device)  # K x P gradient copies
        self._ema = torch.zeros(self.num_tasks, self.num_entries, device=device)  # E, K x P

    def _observe(self, task: int, grads: list[torch.Tensor]) -> None:
        _flat_into(self._grad_rows[task], grads)

    def _combine(self) -> list[torch.Tensor]:
        self._require_all_tasks()
        grads, k = self._grad_rows, self.num_tasks
        with torch.no_grad():
            if not bool(torch.isfinite(grads).all()):
                return _unflat(grads.sum(0) / k, self.params)
            theta = torch.empty(self.num_entries, device=grads.device)
            _flat_into(theta, self.params)
            ipt = (theta * grads).abs()
            med = torch.tensor([_median(row, self.median_over == "nonzero") for row in ipt], device=ipt.device)
            ipt = ipt / (med[:, None] + _EPS)
            self._ema.mul_(self.beta).add_(ipt, alpha=1.0 - self.beta)
            if self.steps < self.warmup_steps:
                combined = grads.sum(0) / k
            else:
                weights = torch.softmax(self._ema / self.tau, dim=0)
                combined = (weights * grads).sum(0) / self._divisor(weighted=True)
        return _unflat(combined, self.params)

    def _task_logits(self) -> Iterator[torch.Tensor]:
        offset = 0
        for p in self.params:
            yield self._ema[:, offset:offset + p.numel()] / self.tau
            offset += p.numel()

    def _buffers_state(self) -> dict[str, Any]:
        return {"ema": self._ema.clone()}

    def _load_buffers(self, state: dict[str, Any]) -> None:
        self._ema.copy_(state["ema"])


class StreamedTaskSpecialization(TaskSpecialization):
    """TACO streamed (``taco``'s default, ``exact=False``): no gradient copies, only the K EMAs
    and one fp32 accumulator (as ``naive`` has). It differs from the exact update in exactly
    these ways:

    1. one-step lag: step s weights the tasks with E after step s-1 (E from zero at step 0,
       i.e. uniform weights 1/K), since each g_t is folded in as it is observed; E itself is
       updated as in exact mode. With beta = 0.999 the lag moves a logit by (1-beta)(I-E)/tau.
    2. the median of |theta * g_t| is that of a fixed random sample of ``median_sample``
       entries (drawn once, with replacement, from ``seed``); exact when P <= median_sample
       or ``median_sample=None``.
    3. E is stored as log-weights: F_t = E_t / tau - lse_t'(E_t' / tau), renormalised at the
       end of each step (softmax is shift-invariant and the shift decays by beta, so this is
       the same EMA); in ``ema_dtype`` (float32, or bfloat16 with stochastic rounding, whose
       noise at beta = 0.999 is about 10 bfloat16 steps in each log-weight).
    4. a non-finite g_t is only seen when task t is observed: tasks observed before it in
       that step keep their weighted contribution and their EMA update; it and later tasks
       add plainly and leave their EMA unchanged. The written gradient is non-finite either
       way (so a GradScaler skips the step, as with exact).
    """

    exact = False

    def _allocate(self, median_sample: int | None) -> None:
        k, device = self.num_tasks, self.params[0].device
        # F_t per parameter tensor, shape (K, numel): log-weights up to a shared shift, from the
        # uniform -log K so that the weights sum to one from the first step
        self._logits = [torch.full((k, p.numel()), -math.log(k), dtype=self.ema_dtype, device=device)
                        for p in self.params]
        self._acc: list[torch.Tensor] | None = None
        self._nonfinite = False
        self._rng = torch.Generator(device=device).manual_seed(self.seed)
        self._sample = self._draw_sample(median_sample, self.seed)

    def _draw_sample(self, size: int | None, seed: int) -> list[torch.Tensor] | None:
        """Per tensor, the local indices of a fixed random sample of all P entries."""
        if size is None or self.num_entries <= size:
            return None
        gen = torch.Generator().manual_seed(seed)
        flat = torch.sort(torch.randint(0, self.num_entries, (size,), generator=gen)).values
        out, offset = [], 0
        for p in self.params:
            n = p.numel()
            lo, hi = torch.searchsorted(flat, torch.tensor([offset, offset + n]))
            out.append((flat[lo:hi] - offset).to(self.params[0].device))
            offset += n
        return out

    def _median(self, grads: list[torch.Tensor]) -> float:
        """Median of |theta * g| over all entries, or over the fixed sample (non-zero ones only
        with ``median_over="nonzero"``)."""
        if self._sample is None:
            parts = [(p.detach().reshape(-1).float() * g.reshape(-1).float()).abs() for p, g in zip(self.params, grads)]
        else:
            parts = [(p.detach().reshape(-1)[i].float() * g.reshape(-1)[i].float()).abs()
                     for p, g, i in zip(self.params, grads, self._sample)]
        return _median(torch.cat(parts), self.median_over == "nonzero")

    def _observe(self, task: int, grads: list[torch.Tensor]) -> None:
        if self._acc is None:
            self._acc = [torch.zeros(p.numel(), device=p.device) for p in self.params]
            self._nonfinite = False
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            self._nonfinite = True
        weighted = self.steps >= self.warmup_steps and not self._nonfinite
        scale = 0.0 if self._nonfinite else (1.0 - self.beta) / (self.tau * (self._median(grads) + _EPS))
        for p, g, acc, logits in zip(self.params, grads, self._acc, self._logits):
            g = g.detach().reshape(-1).float()
            row = logits[task]
            if weighted:
                acc.addcmul_(torch.exp(row.float()), g)
            else:
                acc.add_(g)
            if self._nonfinite:
                continue
            inc = p.detach().reshape(-1).float().mul(g).abs_().mul_(scale)  # (1-beta) I_t / tau
            if self.ema_dtype == torch.float32:
                row.mul_(self.beta).add_(inc)
            else:
                row.copy_(_stochastic_round_bf16(row.float().mul_(self.beta).add_(inc), self._rng))

    def _renormalise(self, chunk: int = 1 << 20) -> None:
        """Shift every entry's F_t so that exp(F_t) sums to one over tasks."""
        for logits in self._logits:
            for a in range(0, logits.shape[1], chunk):
                block = logits[:, a:a + chunk]
                x = block.float()
                x = x - torch.logsumexp(x, dim=0, keepdim=True)
                block.copy_(x if self.ema_dtype == torch.float32 else _stochastic_round_bf16(x, self._rng))

    def _combine(self) -> list[torch.Tensor]:
        self._require_all_tasks()
        assert self._acc is not None
        div = self._divisor(self.steps >= self.warmup_steps and not self._nonfinite)
        out = [acc.div_(div).reshape(p.shape).to(p.dtype) for acc, p in zip(self._acc, self.params)]
        self._acc = None
        if self.steps + 1 >= self.warmup_steps:
            self._renormalise()
        self._nonfinite = False
        return out

    def _task_logits(self) -> Iterator[torch.Tensor]:
        return (logits.float() for logits in self._logits)

    def _buffers_state(self) -> dict[str, Any]:
        return {"logits": [t.clone() for t in self._logits], "rng": self._rng.get_state()}

    def _load_buffers(self, state: dict[str, Any]) -> None:
        for dst, src in zip(self._logits, state["logits"], strict=True):
            dst.copy_(src)
        self._rng.set_state(state["rng"])


def _held_tensors(obj: Any, skip: list[nn.Parameter]) -> Iterator[torch.Tensor]:
    """Tensors reachable from ``obj`` through dicts, lists and tuples (parameters excluded)."""
    skip_ids = {id(p) for p in skip}
    stack, seen = [obj], set()
    while stack:
        x = stack.pop()
        if id(x) in seen or id(x) in skip_ids:
            continue
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


# ----------------------------------------------------------------------------- PCGrad, CGD

class _FlatRows(GradientCombiner):
    """Keeps the K task gradients as rows of a K x P float32 matrix (what PCGrad and CGD need);
    the first `warmup_steps` steps write their plain mean (a naive warm-up)."""

    def __init__(self, params: Iterable[nn.Parameter], num_tasks: int, seed: int = 0, warmup_steps: int = 0):
        super().__init__(params, num_tasks, seed)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        self._rows = torch.zeros(num_tasks, sum(p.numel() for p in self.params), device=self.params[0].device)

    def _observe(self, task: int, grads: list[torch.Tensor]) -> None:
        _flat_into(self._rows[task], grads)

    def _combine(self) -> list[torch.Tensor]:
        self._require_all_tasks()
        with torch.no_grad():
            rows = self._rows
            if self.steps < self.warmup_steps or not bool(torch.isfinite(rows).all()):
                return _unflat(rows.sum(0) / self.num_tasks, self.params)
            return _unflat(self._combine_rows(rows), self.params)

    @abstractmethod
    def _combine_rows(self, rows: torch.Tensor) -> torch.Tensor: ...


class PCGrad(_FlatRows):
    """PCGrad (Yu et al., 2020): each task gradient is projected off the normal plane of every
    other task gradient it conflicts with (negative dot product), in a random order, against
    the original gradients; the update is the mean of the projected gradients.

    The order is drawn from a seeded generator (saved in ``state_dict``). The TACO repo's
    ``pcg_backward`` also lists the task itself in the shuffled order; like the paper, this
    skips it. A non-finite gradient gives the plain mean.
    """

    def __init__(self, params: Iterable[nn.Parameter], num_tasks: int, seed: int = 0, warmup_steps: int = 0):
        super().__init__(params, num_tasks, seed, warmup_steps)
        self._rng = torch.Generator().manual_seed(seed)

    def _combine_rows(self, rows: torch.Tensor) -> torch.Tensor:
        k = self.num_tasks
        sq_norms = (rows * rows).sum(1)
        out = rows.clone()
        for i in range(k):
            others = [j for j in torch.randperm(k, generator=self._rng).tolist() if j != i]
            for j in others:
                dot = torch.dot(out[i], rows[j])
                if dot < 0 and sq_norms[j] > 0:
                    out[i] -= (dot / sq_norms[j]) * rows[j]
        return out.sum(0) / k

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "rng": self._rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._rng.set_state(state["rng"])


class CGD(_FlatRows):
    """CGD as in the TACO repo (``cgd_backward``): task weights w, from 1/K, updated each step by
    w <- softmax(r / tau + log w) with r_i = sum_j (L_i L_j)^beta <u_i, u_j>, u_t = g_t / |g_t|
    (``normalize``; else u_t = g_t) and L_t the task losses; the update is sum_t w_t g_t.

    Needs each task's loss: ``observe(t, loss=...)``. Defaults are the repo's KILT recipe
    (beta 0.25, tau 100, normalised gradients, all parameters). A non-finite gradient gives the
    plain mean and leaves w unchanged.
    """

    def __init__(self, params: Iterable[nn.Parameter], num_tasks: int, beta: float = 0.25,
                 tau: float = 100.0, normalize: bool = True, seed: int = 0, warmup_steps: int = 0):
        super().__init__(params, num_tasks, seed, warmup_steps)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.beta, self.tau, self.normalize = beta, tau, normalize
        self.weights = torch.full((num_tasks,), 1.0 / num_tasks, device=self.params[0].device)

    def _combine_rows(self, rows: torch.Tensor) -> torch.Tensor:
        missing = sorted(set(range(self.num_tasks)) - set(self._losses))
        if missing:
            raise RuntimeError(f"cgd needs every task's loss: observe(t, loss=...) (missing {missing})")
        losses = torch.tensor([self._losses[t] for t in range(self.num_tasks)], device=rows.device)
        if bool((losses < 0).any()):
            raise ValueError(f"cgd needs non-negative losses, got {losses.tolist()}")
        units = rows / rows.norm(dim=1, keepdim=True) if self.normalize else rows
        reward = (torch.outer(losses, losses).pow(self.beta) * (units @ units.T)).sum(1)
        self.weights = torch.softmax(reward / self.tau + self.weights.log(), dim=0)
        return self.weights @ rows

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.weights = state["weights"].clone().to(self.params[0].device)


COMBINERS: dict[str, type[GradientCombiner]] = {
    "naive": NaiveSum, "taco": TaskSpecialization, "pcgrad": PCGrad, "cgd": CGD}


def make_combiner(method: str, params: Iterable[nn.Parameter], num_tasks: int, **options: Any) -> GradientCombiner:
    """The combiner registered as ``method`` (naive, taco, pcgrad, cgd)."""
    try:
        cls = COMBINERS[method]
    except KeyError:
        raise ValueError(f"unknown multitask method {method!r}; known: {', '.join(COMBINERS)}") from None
    return cls(params, num_tasks, **options)
