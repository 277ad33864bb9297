"""Specification of the multitask gradient combiners: TACO (exact and streamed), PCGrad, CGD."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from multitask_retriever.specialization import (
    CGD,
    COMBINERS,
    ExactTaskSpecialization,
    NaiveSum,
    PCGrad,
    StreamedTaskSpecialization,
    TacoConfig,
    TaskSpecialization,
    make_combiner,
)

K = 3


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def task_batches(steps: int, seed: int = 1) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per step, per task, (inputs, regression targets); each task a shared map plus its own."""
    maps_gen = torch.Generator().manual_seed(1234)
    shared = torch.randn(4, 3, generator=maps_gen)
    maps = [shared + 0.5 * torch.randn(4, 3, generator=maps_gen) for _ in range(K)]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        step = []
        for t in range(K):
            x = torch.randn(8, 4, generator=gen)
            step.append((x, torch.tanh(x @ maps[t])))
        out.append(step)
    return out


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def run_step(model, combiner, batch, bad_task: int | None = None):
    """One step: per-task backward + observe; returns (task grads K x P, theta, written grad)."""
    rows = []
    for t, (x, y) in enumerate(batch):
        model.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if t == bad_task:
            next(model.parameters()).grad[0, 0] = float("nan")
        rows.append(flat(p.grad for p in model.parameters()).clone())
        combiner.observe(t, loss=loss)
    theta = flat(model.parameters()).clone()
    combiner.apply()
    return torch.stack(rows), theta, flat(p.grad for p in model.parameters())


def sgd(model, lr: float = 0.1) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if torch.isfinite(p.grad).all():
                p -= lr * p.grad


def reference_taco(grads: torch.Tensor, theta: torch.Tensor, ema: torch.Tensor, step: int, *,
                   beta: float, tau: float, warmup: int, lag: bool = False,
                   scale: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """TACO's update written directly: returns (combined gradient, new E)."""
    k = grads.shape[0]
    if not torch.isfinite(grads).all():
        return grads.sum(0) / k, ema
    ipt = (theta * grads).abs()
    med = torch.stack([torch.sort(r).values[(r.numel() - 1) // 2] for r in ipt])  # lower middle
    new_ema = beta * ema + (1 - beta) * ipt / (med[:, None] + 1e-12)
    if step < warmup:
        return grads.sum(0) / k, new_ema
    logits = (ema if lag else new_ema) / tau
    w = torch.exp(logits - logits.max(0).values) / torch.exp(logits - logits.max(0).values).sum(0)
    return (w * grads).sum(0) / (k if scale == "official" else 1), new_ema


# ----------------------------------------------------------------------------- TACO exact

@pytest.mark.parametrize("scale", ["mean", "official"])
@pytest.mark.parametrize("lag", [False, True], ids=["exact", "streamed"])
def test_taco_matches_direct_formula(lag: bool, scale: str):
    """exact=True follows the formula; exact=False is the same with one step of lag, to 1e-6,
    through 2 warm-up steps, weighted steps and a step with a NaN gradient (step 3)."""
    beta, tau, warmup, nan_step = 0.6, 0.5, 2, 3
    model = tiny_model()
    spec = TaskSpecialization(model.parameters(), num_tasks=K, beta=beta, tau=tau,
                              warmup_steps=warmup, exact=not lag, scale=scale)
    ema = torch.zeros(K, sum(p.numel() for p in model.parameters()))
    for step, batch in enumerate(task_batches(7)):
        bad = 0 if step == nan_step else None  # first task observed: the streamed mode matches too
        grads, theta, written = run_step(model, spec, batch, bad_task=bad)
        expected, ema = reference_taco(grads, theta, ema, step, beta=beta, tau=tau, warmup=warmup, lag=lag,
                                       scale=scale)
        assert torch.allclose(written, expected, atol=1e-6, rtol=0, equal_nan=True), step
        assert torch.isnan(written).any() == (step == nan_step)
        weights = torch.cat([w.reshape(K, -1) for w in spec.task_weights()], dim=1)
        assert torch.allclose(weights, torch.softmax(ema / tau, dim=0), atol=1e-6), step
        sgd(model)
    assert spec.steps == 7


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "streamed"])
def test_taco_official_scale_is_k_times_smaller_after_the_warm_up(exact: bool):
    """Both scales write the mean gradient during the warm-up; then official writes 1/K of mean's."""
    model_a, model_b = tiny_model(), tiny_model()
    a = TaskSpecialization(model_a.parameters(), K, exact=exact, warmup_steps=1)
    b = TaskSpecialization(model_b.parameters(), K, exact=exact, warmup_steps=1, scale="official")
    for step, batch in enumerate(task_batches(3)):
        _, _, ga = run_step(model_a, a, batch)
        _, _, gb = run_step(model_b, b, batch)
        assert torch.allclose(gb, ga if step < 1 else ga / K, atol=1e-7), step


def _adam_run(combiner_for, steps: int = 8) -> torch.Tensor:
    """The flat weights of `tiny_model()` after `steps` AdamW steps on the combined gradient."""
    model = tiny_model()
    combiner = combiner_for(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    for batch in task_batches(steps):
        run_step(model, combiner, batch)
        optimizer.step()
    return flat(model.parameters())


def _uniform_taco(exact: bool, warmup: int, scale: str):
    """TACO whose weights a huge tau keeps uniform."""
    return lambda m: TaskSpecialization(m.parameters(), K, tau=1e9, warmup_steps=warmup, exact=exact, scale=scale)


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "streamed"])
def test_taco_with_uniform_weights_at_mean_scale_trains_as_naive(exact: bool, warmup: int):
    """Uniform weights under scale=mean write naive's gradient: the same weights after AdamW steps."""
    naive = _adam_run(lambda m: NaiveSum(m.parameters(), K))
    assert torch.allclose(_adam_run(_uniform_taco(exact, warmup, "mean")), naive, atol=1e-5, rtol=0)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "streamed"])
def test_taco_at_official_scale_falls_behind_naive_after_its_warm_up(exact: bool):
    """Under scale=official the update drops K-fold when the warm-up ends; AdamW's second moment
    still holds the warm-up's scale, so the steps shrink and the weights leave naive's path.
    (Without a warm-up the drop is a constant factor, which Adam absorbs.)"""
    naive = _adam_run(lambda m: NaiveSum(m.parameters(), K))
    start = flat(tiny_model().parameters())
    gap = (_adam_run(_uniform_taco(exact, 3, "official")) - naive).norm() / (naive - start).norm()
    assert gap > 0.05


def test_taco_refuses_an_unknown_scale():
    with pytest.raises(ValueError, match="scale must be one of mean, official, got 'half'"):
        TacoConfig(scale="half")


# ----------------------------------------------------------------------------- TACO streamed

def test_streamed_nonfinite_task_keeps_earlier_updates_only():
    """Documented difference 4: task 0 (before the NaN task 1) is weighted and its EMA
    updated; tasks 1 and 2 add plainly and keep their EMA."""
    model = tiny_model()
    spec = TaskSpecialization(model.parameters(), K, beta=0.5, tau=1.0)
    batches = task_batches(2)
    run_step(model, spec, batches[0])
    before = [t.clone() for t in spec._logits]
    w = torch.cat([x.reshape(K, -1) for x in spec.task_weights()], dim=1)
    grads, _, written = run_step(model, spec, batches[1], bad_task=1)
    expected = (w[0] * grads[0] + grads[1] + grads[2]) / K
    assert torch.allclose(written, expected, atol=1e-6, equal_nan=True)
    assert torch.isnan(written[0])
    # rows are renormalised after the step, so compare differences to task 2 (never updated)
    for old, new in zip(before, spec._logits):
        assert torch.allclose(new[1] - new[2], old[1] - old[2], atol=1e-6)
        assert not torch.allclose(new[0] - new[2], old[0] - old[2], atol=1e-4)


def test_streamed_median_sample_is_close_to_full_median():
    """Documented difference 2: a 4096-entry sample of 16.6k entries estimates the median."""
    torch.manual_seed(0)
    layer = nn.Linear(128, 128)
    spec = TaskSpecialization(layer.parameters(), 2, median_sample=4096)
    full = TaskSpecialization(layer.parameters(), 2, median_sample=None)
    grads = [torch.randn_like(p) for p in layer.parameters()]
    true = torch.cat([(p.detach() * g).abs().reshape(-1) for p, g in zip(layer.parameters(), grads)]).median()
    assert full._median(grads) == pytest.approx(float(true), rel=1e-7)
    assert spec._median(grads) == pytest.approx(float(true), rel=0.05)
    assert spec._median(grads) != full._median(grads)


def _toy_training(method: str, steps: int = 80, **options) -> float:
    model = tiny_model(3)
    comb = make_combiner(method, model.parameters(), num_tasks=K, **options)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for batch in task_batches(steps, seed=5):
        run_step(model, comb, batch)
        opt.step()
    with torch.no_grad():
        return sum(float(((model(x) - y) ** 2).mean()) for x, y in task_batches(1, seed=9)[0]) / K


def test_streamed_trains_like_exact_on_a_toy_problem():
    """80 Adam steps, beta .99: final held-out loss within 5% (the lag grows as beta falls:
    at beta .9 the two differ by ~15% on this problem)."""
    start = _toy_training("naive", steps=0)
    exact = _toy_training("taco", exact=True, beta=0.99, tau=1.0)
    streamed = _toy_training("taco", exact=False, beta=0.99, tau=1.0)
    bf16 = _toy_training("taco", exact=False, beta=0.99, tau=1.0, ema_dtype=torch.bfloat16)
    assert exact < 0.25 * start
    assert streamed == pytest.approx(exact, rel=0.05)
    assert bf16 == pytest.approx(exact, rel=0.05)


def test_bf16_rounding_is_unbiased_so_a_slow_ema_does_not_stall():
    """Documented difference 3: an EMA with beta .999 kept in bfloat16 by nearest rounding stops
    moving near a third of its target; stochastic rounding tracks float32 on average."""
    from multitask_retriever.specialization import _stochastic_round_bf16

    gen = torch.Generator().manual_seed(0)
    x = torch.full((200_000,), 1.0 + 2.0 ** -9)  # a quarter of the way from 1 to the next bf16
    assert _stochastic_round_bf16(x, gen).float().mean().item() == pytest.approx(1.0 + 2.0 ** -9, abs=2e-5)
    nearest = stochastic = torch.zeros(512, dtype=torch.bfloat16)
    for _ in range(3000):
        nearest = (0.999 * nearest.float() + 0.001).to(torch.bfloat16)
        stochastic = _stochastic_round_bf16(0.999 * stochastic.float() + 0.001, gen)
    assert nearest.float().mean().item() < 0.6
    assert stochastic.float().mean().item() == pytest.approx(1 - 0.999 ** 3000, abs=0.01)


def held_elements(obj) -> list[int]:
    """numel of every tensor the object holds in its attributes (parameters excluded)."""
    params = {id(p) for p in obj.params}
    out, stack = [], list(vars(obj).values())
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor) and id(x) not in params:
            out.append(x.numel())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
    return out


def test_streamed_holds_only_the_k_emas():
    """No K x P gradient copies: between steps exactly K*P EMA entries, mid-step + one P
    accumulator; exact mode holds K x P gradient rows and K x P EMAs."""
    model = tiny_model()
    p_entries = sum(p.numel() for p in model.parameters())
    streamed = TaskSpecialization(model.parameters(), K)
    exact = TaskSpecialization(model.parameters(), K, exact=True)
    bf16 = TaskSpecialization(model.parameters(), K, ema_dtype=torch.bfloat16)
    batch = task_batches(1)[0]
    assert sum(held_elements(streamed)) == K * p_entries
    model.zero_grad()
    ((model(batch[0][0]) - batch[0][1]) ** 2).mean().backward()
    streamed.observe(0)
    assert sum(held_elements(streamed)) == (K + 1) * p_entries
    assert sum(held_elements(exact)) == 2 * K * p_entries
    assert bf16.buffer_bytes() == 2 * K * p_entries
    assert streamed.buffer_bytes() == 4 * (K + 1) * p_entries


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("method,options", [
    ("taco", {"exact": True}), ("taco", {}), ("taco", {"ema_dtype": torch.bfloat16}),
    ("pcgrad", {"seed": 3}), ("cgd", {}), ("naive", {})])
def test_state_dict_round_trip_gives_identical_updates(method, options):
    batches = task_batches(6)
    model = tiny_model()
    comb = make_combiner(method, model.parameters(), K, warmup_steps=1, **options) if method == "taco" \
        else make_combiner(method, model.parameters(), K, **options)
    for batch in batches[:3]:
        run_step(model, comb, batch)
        sgd(model)
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(comb.state_dict())
    straight = []
    for batch in batches[3:]:
        straight.append(run_step(model, comb, batch)[2])
        sgd(model)

    resumed_model = tiny_model(seed=99)
    resumed_model.load_state_dict(saved_model)
    resumed = make_combiner(method, resumed_model.parameters(), K, warmup_steps=1, **options) \
        if method == "taco" else make_combiner(method, resumed_model.parameters(), K, **options)
    resumed.load_state_dict(saved_state)
    assert resumed.steps == 3
    for batch, expected in zip(batches[3:], straight):
        assert torch.equal(run_step(resumed_model, resumed, batch)[2], expected)
        sgd(resumed_model)


def test_taco_state_of_other_mode_is_refused():
    model = tiny_model()
    state = TaskSpecialization(model.parameters(), K, exact=True).state_dict()
    with pytest.raises(ValueError, match="exact"):
        TaskSpecialization(model.parameters(), K).load_state_dict(state)


@pytest.mark.parametrize("exact, cls, keys", [
    (True, ExactTaskSpecialization, ["steps", "exact", "ema"]),
    (False, StreamedTaskSpecialization, ["steps", "exact", "logits", "rng"])])
def test_taco_builds_the_class_of_its_mode_with_the_modes_state_keys(exact, cls, keys):
    model = tiny_model()
    assert COMBINERS["taco"] is TaskSpecialization
    for spec in (TaskSpecialization(model.parameters(), K, exact=exact),
                 TaskSpecialization(model.parameters(), K, 0.999, 2.0, 0, exact),  # positional as before
                 make_combiner("taco", model.parameters(), K, **TacoConfig(exact=exact).combiner_options()),
                 cls(model.parameters(), K)):
        assert type(spec) is cls and isinstance(spec, TaskSpecialization) and spec.exact is exact
        assert list(spec.state_dict()) == keys
    assert type(TaskSpecialization(model.parameters(), K)) is StreamedTaskSpecialization
    assert type(copy.deepcopy(cls(model.parameters(), K))) is cls
    with pytest.raises(ValueError, match=f"{cls.__name__} has exact={exact}, got exact={not exact}"):
        cls(model.parameters(), K, exact=not exact)


# ----------------------------------------------------------------------------- PCGrad, CGD

def feed(comb, grads: list[list[float]], param: nn.Parameter, losses: list[float] | None = None) -> torch.Tensor:
    for t, g in enumerate(grads):
        param.grad = torch.tensor(g)
        comb.observe(t, loss=None if losses is None else losses[t])
    comb.apply()
    return param.grad


def test_pcgrad_projects_conflicting_gradients():
    """g1=(1,0), g2=(-1,1): g1 -> g1 + g2/2 = (.5,.5), g2 -> g2 + g1 = (0,1); mean (.25,.75)."""
    param = nn.Parameter(torch.zeros(2))
    out = feed(PCGrad([param], 2), [[1.0, 0.0], [-1.0, 1.0]], param)
    assert torch.allclose(out, torch.tensor([0.25, 0.75]))


def test_pcgrad_leaves_agreeing_gradients_and_order_is_seeded():
    param = nn.Parameter(torch.zeros(2))
    assert torch.allclose(feed(PCGrad([param], 2), [[1.0, 0.0], [1.0, 1.0]], param), torch.tensor([1.0, 0.5]))
    grads = [[1.0, 0.0], [-1.0, 0.2], [-0.3, -1.0]]
    outs = {s: feed(PCGrad([param], 3, seed=s), grads, param).clone() for s in (0, 0, 1, 2, 3, 4)}
    assert torch.equal(feed(PCGrad([param], 3, seed=0), grads, param), outs[0])
    assert len({tuple(v.tolist()) for v in outs.values()}) > 1  # the order matters here


def test_cgd_hand_computed_weights_over_two_steps():
    """u = (e1, e2) orthogonal, L = (1, 4), beta .5, tau 1: r = (1, 4); w1 = softmax(r + log(.5,.5))
    = softmax(1, 4); w2 = softmax(r + log w1) = softmax(2, 8); g = w @ (g1, g2)."""
    param = nn.Parameter(torch.zeros(2))
    cgd = CGD([param], 2, beta=0.5, tau=1.0)
    for step, (a, b) in enumerate([(1.0, 4.0), (2.0, 8.0)]):
        out = feed(cgd, [[1.0, 0.0], [0.0, 2.0]], param, losses=[1.0, 4.0])
        w0 = math.exp(a) / (math.exp(a) + math.exp(b))
        assert torch.allclose(out, torch.tensor([w0, 2 * (1 - w0)]), atol=1e-6), step
        assert cgd.weights.sum().item() == pytest.approx(1.0)


def test_cgd_needs_losses():
    param = nn.Parameter(torch.zeros(2))
    with pytest.raises(RuntimeError, match="loss"):
        feed(CGD([param], 2), [[1.0, 0.0], [0.0, 1.0]], param)


def test_nonfinite_gives_plain_mean_for_pcgrad_and_cgd():
    param = nn.Parameter(torch.zeros(2))
    for comb in (PCGrad([param], 2), CGD([param], 2)):
        out = feed(comb, [[1.0, float("inf")], [-3.0, 1.0]], param, losses=[1.0, 1.0])
        assert out[0].item() == -1.0 and math.isinf(out[1].item())
    assert torch.equal(comb.weights, torch.tensor([0.5, 0.5]))


def test_naive_is_the_plain_mean():
    param = nn.Parameter(torch.zeros(2))
    assert torch.equal(feed(NaiveSum([param], 2), [[1.0, 2.0], [3.0, -2.0]], param), torch.tensor([2.0, 0.0]))


# ----------------------------------------------------------------------------- diagnostics

def test_diagnostics_on_hand_built_weights():
    """E for 'enc.a': task 0 far ahead -> one-hot; 'enc.b': zero -> uniform; 'head': (.75, .125, .125)."""
    a, b, head = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(2))
    spec = TaskSpecialization([a, b, head], K, exact=True, tau=2.0)
    ema = torch.zeros(K, 10)
    ema[0, :4] = 2000.0
    ema[0, 8:] = 2.0 * math.log(6.0)  # weights (6, 1, 1) / 8 = (.75, .125, .125)
    spec.load_state_dict({"steps": 5, "exact": True, "ema": ema})
    diag = spec.diagnostics([("enc.a", a), ("enc.b", b), ("head", head)])
    w = [0.75, 0.125, 0.125]
    gini = sum(abs(x - y) for x in w for y in w) / (2 * K)
    expected = {"enc.a": ({"entropy": 0.0, "gini": 2 / 3, "top_share": 1.0, "entries": 4}, [1.0, 0.0, 0.0]),
                "enc.b": ({"entropy": math.log(3), "gini": 0.0, "top_share": 0.0, "entries": 4}, [1 / 3] * 3),
                "head": ({"entropy": -sum(x * math.log(x) for x in w), "gini": gini, "top_share": 1.0,
                          "entries": 2}, w)}
    grouped = spec.diagnostics([("enc.a", a), ("enc.b", b), ("head", head)], depth=1)
    expected_grouped = {"enc": ({"entropy": math.log(3) / 2, "gini": 1 / 3, "top_share": 0.5, "entries": 8},
                                [2 / 3, 1 / 6, 1 / 6])}
    for got, want in ((diag, expected), (grouped, expected_grouped)):
        for name, (stats, task_weights) in want.items():
            assert {k: v for k, v in got[name].items() if k != "task_weights"} == pytest.approx(stats)
            assert got[name]["task_weights"] == pytest.approx(task_weights)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown multitask method"):
        make_combiner("gradnorm", model.parameters(), K)
    assert set(COMBINERS) == {"naive", "taco", "pcgrad", "cgd"}
    spec = make_combiner("taco", model.parameters(), K)
    with pytest.raises(RuntimeError, match="before any observe"):
        spec.apply()
    for bad in (K, -1):
        with pytest.raises(ValueError, match="out of range"):
            spec.observe(bad)
    spec.observe(0)
    with pytest.raises(RuntimeError, match="observed twice"):
        spec.observe(0)
    with pytest.raises(RuntimeError, match=r"tasks \[1, 2\]"):
        spec.apply()
    with pytest.raises(ValueError, match="beta"):
        TaskSpecialization(model.parameters(), K, beta=1.0)
    with pytest.raises(ValueError, match="float32"):
        TaskSpecialization(model.parameters(), K, exact=True, ema_dtype=torch.bfloat16)


# ----------------------------------------------------------------------------- TACO's median

def _embedding_model() -> nn.Module:
    """A 100-row embedding (400 entries) and a 15-entry head: a batch of 5 token ids leaves
    95 % of the embedding, and so most of all entries, without gradient (as a vocabulary)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(100, 4), nn.Flatten(0), nn.Linear(4 * 5, 3))


def _embedding_step(model, combiner, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    for t in range(K):
        model.zero_grad()
        ids = torch.randint(0, 100, (5,), generator=gen)
        ((model(ids) - torch.randn(3, generator=gen)) ** 2).mean().backward()
        combiner.observe(t)
    combiner.apply()
    return torch.cat([w.reshape(K, -1) for w in combiner.task_weights()], dim=1)


def test_taco_median_is_that_of_the_non_zero_importances():
    model = _embedding_model()
    ids = torch.arange(5)
    ((model(ids) - 1.0) ** 2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    ipt = torch.cat([(p.detach() * g).abs().reshape(-1) for p, g in zip(model.parameters(), grads)])
    nonzero = torch.sort(ipt[ipt != 0]).values
    assert (ipt == 0).float().mean() > 0.5
    spec = TaskSpecialization(model.parameters(), K, median_sample=None)
    assert spec._median(grads) == pytest.approx(float(nonzero[(nonzero.numel() - 1) // 2]), rel=1e-7)
    official = TaskSpecialization(model.parameters(), K, median_sample=None, median_over="all")
    assert official._median(grads) == 0.0


def test_exact_taco_normalises_by_the_non_zero_median():
    model = _embedding_model()
    spec = TaskSpecialization(model.parameters(), K, exact=True, beta=0.5, tau=1.0)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for t in range(K):
        model.zero_grad()
        ((model(torch.randint(0, 100, (5,), generator=gen)) - 1.0) ** 2).mean().backward()
        rows.append(flat(p.grad for p in model.parameters()).clone())
        spec.observe(t)
    theta = flat(model.parameters()).clone()
    spec.apply()
    ipt = (theta * torch.stack(rows)).abs()
    med = torch.stack([torch.sort(r[r != 0]).values[(int((r != 0).sum()) - 1) // 2] for r in ipt])
    expected = torch.softmax(0.5 * ipt / (med[:, None] + 1e-12), dim=0)
    weights = torch.cat([w.reshape(K, -1) for w in spec.task_weights()], dim=1)
    assert torch.allclose(weights, expected, atol=1e-6)


@pytest.mark.parametrize("median_over, most_specialised", [("nonzero", 0.5), ("all", 0.99)])
def test_a_zero_median_hands_each_parameter_to_one_task_from_the_first_step(median_over, most_specialised):
    """With the official median over all entries (0 here), one step at beta 0.999 already makes
    the weights of trained entries one-hot; the non-zero median keeps them near 1/K."""
    model = _embedding_model()
    spec = TaskSpecialization(model.parameters(), K, exact=True, median_over=median_over)
    weights = _embedding_step(model, spec, seed=0)
    head = weights[:, -15:]  # the Linear layer: every entry has a gradient from every task
    if median_over == "all":
        assert head.max(0).values.min() > most_specialised
    else:
        assert head.max(0).values.max() < most_specialised


def test_taco_median_over_must_be_known():
    with pytest.raises(ValueError, match="median_over must be 'nonzero' or 'all'"):
        TaskSpecialization(tiny_model().parameters(), K, median_over="mean")


# ----------------------------------------------------------------------------- TacoConfig

def test_the_taco_section_becomes_the_combiners_options_with_the_runs_seed():
    from multitask_retriever.trainer import TrainConfig

    config = TrainConfig(method="taco", taco=TacoConfig(beta=0.9, median="all"), seed=3, output_dir="x")
    assert config.combiner_kwargs() == {"seed": 3, "beta": 0.9, "tau": 2.0, "warmup_steps": 0, "exact": False,
                                        "median_over": "all", "scale": "mean"}
    assert TrainConfig(method="pcgrad", seed=3, taco=TacoConfig(beta=0.9)).combiner_kwargs() == {"seed": 3}


@pytest.mark.parametrize("method", sorted(COMBINERS))
def test_every_combiner_takes_the_runs_seed(method):
    assert make_combiner(method, tiny_model().parameters(), K, seed=7).seed == 7


@pytest.mark.parametrize("field, value, message", [("beta", 1.0, "beta must be in"), ("tau", 0.0, "tau must be > 0"),
                                                   ("warmup_steps", -1, "warmup_steps must be >= 0"),
                                                   ("median", "mean", "median must be 'nonzero' or 'all'")])
def test_bad_taco_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        TacoConfig(**{field: value})


# ----------------------------------------------------------------------------- diagnostics

@pytest.mark.parametrize("method", sorted(COMBINERS))
def test_every_combiner_reports_the_norm_of_the_gradient_it_wrote(method):
    model = tiny_model()
    combiner = make_combiner(method, model.parameters(), K)
    _, _, written = run_step(model, combiner, task_batches(1)[0])
    assert combiner.last_update_norm == pytest.approx(float(written.norm()), rel=1e-6)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "streamed"])
def test_taco_weight_entropy_is_log_k_when_uniform_and_lower_once_tasks_differ(exact: bool):
    uniform, model = tiny_model(), tiny_model()
    flat_weights = TaskSpecialization(uniform.parameters(), K, tau=1e9, exact=exact)
    sharp = TaskSpecialization(model.parameters(), K, beta=0.5, tau=0.05, exact=exact)
    for batch in task_batches(3):
        run_step(uniform, flat_weights, batch)
        run_step(model, sharp, batch)
    assert flat_weights.weight_entropy() == pytest.approx(math.log(K), rel=1e-6)
    assert sharp.weight_entropy() < 0.9 * math.log(K)
