"""Cost and training quality of the multitask gradient combiners against ``naive``.

Part 1 (cost): one small BERT encoder built from a config (random weights, nothing downloaded),
K synthetic in-batch contrastive task losses; every method runs the same model and batches in
its own subprocess. Reported per method: median step time (K forward/backward passes, observe,
apply, AdamW step), the combiner's own time, the bytes of tensors the combiner holds at its
peak (after the K-th observe), the process's peak RSS; all also as ratios to naive.

Part 2 (quality): a tiny BERT trained on K synthetic retrieval-like tasks that need different
token mappings; final held-out loss of naive vs TACO exact vs the streamed default (float32 and
bfloat16 EMAs), at the KILT recipe (beta .999, tau 2) and at a faster EMA (beta .99, tau 1).

    python benchmarks/specialization.py            # writes benchmarks/results/specialization.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from multitask_retriever.specialization import make_combiner  # noqa: E402

from _common import machine_info, write_result  # noqa: E402  (benchmarks/ is on sys.path)

METHODS = {  # name -> (registered method, options)
    "naive": ("naive", {}),
    "taco_exact": ("taco", {"exact": True}),
    "taco": ("taco", {}),
    "taco_bf16": ("taco", {"ema_dtype": torch.bfloat16}),
    "pcgrad": ("pcgrad", {}),
    "cgd": ("cgd", {}),
}


def build_encoder(hidden: int, layers: int, vocab: int, seed: int) -> BertModel:
    """A BERT encoder from a config with random weights (nothing downloaded)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                        max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(config, add_pooling_layer=False)


def make_tasks(num_tasks: int, vocab: int, seed: int) -> list[torch.Tensor]:
    """Per task a random token permutation: the positive passage is the query mapped through it."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(vocab, generator=gen) for _ in range(num_tasks)]


def task_batch(perm: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = perm.numel()
    query = torch.randint(1, vocab, (batch, length), generator=gen)
    passage = perm[query]
    return query, passage


def contrastive_loss(model: BertModel, query: torch.Tensor, passage: torch.Tensor) -> torch.Tensor:
    """In-batch softmax cross-entropy over first-token embeddings (temperature 0.05)."""
    q = F.normalize(model(input_ids=query).last_hidden_state[:, 0], dim=-1)
    p = F.normalize(model(input_ids=passage).last_hidden_state[:, 0], dim=-1)
    return F.cross_entropy(q @ p.T / 0.05, torch.arange(len(q)))


def held_bytes(comb) -> int:
    from multitask_retriever.specialization import _held_tensors
    return sum(t.numel() * t.element_size() for t in _held_tensors(vars(comb), skip=comb.params))


def cost_setup(args: argparse.Namespace) -> tuple[BertModel, list]:
    """The cost model and its batches, identical for every method."""
    model = build_encoder(args.hidden, args.layers, args.vocab, seed=0)
    perms = make_tasks(args.tasks, args.vocab, seed=1)
    gen = torch.Generator().manual_seed(2)
    batches = [[task_batch(perms[t], args.batch, args.seq_len, gen) for t in range(args.tasks)]
               for _ in range(args.warmup + args.steps)]
    return model, batches


class Runner:
    """One method on its own copy of the model: ``step`` trains one step and times it."""

    def __init__(self, name: str, model: BertModel, num_tasks: int):
        method, options = METHODS[name]
        self.model = copy.deepcopy(model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.comb = make_combiner(method, self.params, num_tasks=num_tasks, **options)
        self.opt = torch.optim.AdamW(self.params, lr=1e-4)
        self.step_s: list[float] = []
        self.combiner_s: list[float] = []
        self.peak_held = 0

    def step(self, batch: list, timed: bool) -> None:
        t0, spent = time.perf_counter(), 0.0
        for t, (q, p) in enumerate(batch):
            self.model.zero_grad(set_to_none=True)
            loss = contrastive_loss(self.model, q, p)
            loss.backward()
            c0 = time.perf_counter()
            self.comb.observe(t, loss=loss)
            spent += time.perf_counter() - c0
        c0 = time.perf_counter()
        held = held_bytes(self.comb)
        self.comb.apply()
        spent += time.perf_counter() - c0
        self.opt.step()
        elapsed = time.perf_counter() - t0
        self.peak_held = max(self.peak_held, held)
        if timed:
            self.step_s.append(elapsed)
            self.combiner_s.append(spent)


def cost_interleaved(args: argparse.Namespace, names: list[str]) -> dict[str, dict]:
    """Step times with the methods interleaved step by step, so load changes hit all alike."""
    torch.set_num_threads(args.threads)
    model, batches = cost_setup(args)
    runners = {name: Runner(name, model, args.tasks) for name in names}
    for i, batch in enumerate(batches):
        for runner in runners.values():
            runner.step(batch, timed=i >= args.warmup)
    return {name: {"step_s": statistics.median(r.step_s), "combiner_s": statistics.median(r.combiner_s),
                   "step_s_all": r.step_s, "held_bytes": r.peak_held,
                   "held_bytes_between_steps": held_bytes(r.comb)} for name, r in runners.items()}


def peak_rss() -> int:
    """This process's RSS high-water mark (VmHWM: reset at exec, unlike ru_maxrss after fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_worker(args: argparse.Namespace, name: str) -> dict:
    """Peak RSS of a process that trains ``name`` for warmup + 1 steps (run in its own process)."""
    torch.set_num_threads(args.threads)
    model, batches = cost_setup(args)
    runner = Runner(name, model, args.tasks)
    del model
    for batch in batches[:args.warmup + 1]:
        runner.step(batch, timed=False)
    return {"peak_rss_bytes": peak_rss(),
            "params": sum(p.numel() for p in runner.params)}


def quality_run(args: argparse.Namespace, name: str, beta: float, tau: float, seed: int) -> dict:
    """Train a tiny encoder with ``name``; held-out mean task loss along the way."""
    torch.set_num_threads(args.threads)
    method, options = METHODS[name]
    if method == "taco":
        options = {**options, "beta": beta, "tau": tau}
    model = build_encoder(args.q_hidden, args.q_layers, args.q_vocab, seed=seed)
    comb = make_combiner(method, model.parameters(), num_tasks=args.tasks, **options)
    opt = torch.optim.AdamW(model.parameters(), lr=args.q_lr)
    perms = make_tasks(args.tasks, args.q_vocab, seed=100 + seed)
    gen, held_gen = torch.Generator().manual_seed(200 + seed), torch.Generator().manual_seed(300 + seed)
    held_out = [task_batch(perms[t], 64, args.q_seq_len, held_gen) for t in range(args.tasks)]

    def evaluate() -> list[float]:
        with torch.no_grad():
            return [float(contrastive_loss(model, q, p)) for q, p in held_out]

    curve = []
    for step in range(args.q_steps):
        if step % args.q_eval_every == 0:
            curve.append([step, statistics.mean(evaluate())])
        for t in range(args.tasks):
            model.zero_grad(set_to_none=True)
            q, p = task_batch(perms[t], args.q_batch, args.q_seq_len, gen)
            loss = contrastive_loss(model, q, p)
            loss.backward()
            comb.observe(t, loss=loss)
        comb.apply()
        opt.step()
    final = evaluate()
    curve.append([args.q_steps, statistics.mean(final)])
    out = {"final_mean_loss": statistics.mean(final), "final_task_losses": final, "curve": curve}
    if hasattr(comb, "diagnostics"):
        diag = comb.diagnostics(model.named_parameters())
        n = sum(d["entries"] for d in diag.values())
        out["weights"] = {k: sum(d[k] * d["entries"] for d in diag.values()) / n
                          for k in ("entropy", "gini", "top_share")}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--tasks", type=int, default=4, help="K, number of tasks")
    ap.add_argument("--hidden", type=int, default=256, help="cost model: hidden size")
    ap.add_argument("--layers", type=int, default=4, help="cost model: transformer layers")
    ap.add_argument("--vocab", type=int, default=8192, help="cost model: vocabulary size")
    ap.add_argument("--seq-len", type=int, default=64, help="cost model: tokens per query/passage")
    ap.add_argument("--batch", type=int, default=8, help="cost model: queries per task and step")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, loaded machine more threads make small ops erratic)")
    ap.add_argument("--q-hidden", type=int, default=64, help="quality model: hidden size")
    ap.add_argument("--q-layers", type=int, default=2, help="quality model: layers")
    ap.add_argument("--q-vocab", type=int, default=512, help="quality model: vocabulary size")
    ap.add_argument("--q-seq-len", type=int, default=8, help="quality model: tokens per text")
    ap.add_argument("--q-batch", type=int, default=16, help="quality model: queries per task and step")
    ap.add_argument("--q-steps", type=int, default=150, help="quality: training steps")
    ap.add_argument("--q-lr", type=float, default=1e-3, help="quality: AdamW learning rate")
    ap.add_argument("--q-eval-every", type=int, default=25, help="quality: curve resolution")
    ap.add_argument("--q-seeds", type=int, default=2, help="quality: seeds per method")
    ap.add_argument("--skip-quality", action="store_true", help="only the cost part")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "specialization.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(rss_worker(args, args.worker)))
        return
    raw = sys.argv[1:] if argv is None else argv
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    if "naive" not in methods:
        methods.insert(0, "naive")
    cost = cost_interleaved(args, methods)
    for name in methods:
        cmd = [sys.executable, __file__, *raw, "--worker", name]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        cost[name].update(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{name:11s} step {cost[name]['step_s']:.3f}s combiner {cost[name]['combiner_s']:.3f}s "
              f"held {cost[name]['held_bytes'] / 2**20:.1f} MiB peak RSS {cost[name]['peak_rss_bytes'] / 2**20:.0f} MiB",
              flush=True)
    base = cost["naive"]
    p_entries, k = base["params"], args.tasks
    for name, c in cost.items():
        c["step_time_ratio"] = c["step_s"] / base["step_s"]
        c["held_bytes_ratio"] = c["held_bytes"] / base["held_bytes"]
        c["extra_held_bytes"] = c["held_bytes"] - base["held_bytes"]
        c["extra_held_in_units_of_KxP_fp32"] = c["extra_held_bytes"] / (4 * k * p_entries)
        c["peak_rss_ratio"] = c["peak_rss_bytes"] / base["peak_rss_bytes"]
    result = {
        "command": "python benchmarks/specialization.py" + ("" if not raw else " " + shlex.join(raw)),
        "machine": {**machine_info(), "threads": args.threads, "device": "cpu",
                    "load_average_at_start": os.getloadavg()},
        "cost_setup": {"model": "BertModel from BertConfig, random weights", "hidden": args.hidden,
                       "layers": args.layers, "vocab": args.vocab, "params": p_entries, "tasks": k,
                       "batch_per_task": args.batch, "seq_len": args.seq_len, "timed_steps": args.steps,
                       "step": "K x (forward q+p, backward, observe) + apply + AdamW step; median over steps, "
                               "methods interleaved step by step in one process; peak RSS from a separate "
                               "process per method"},
        "targets": {"taco_default_step_time_ratio_max": 1.3,
                    "taco_default_extra_bytes_max": f"K x P in the EMA precision = {4 * k * p_entries} (fp32), "
                                                    f"{2 * k * p_entries} (bf16)"},
        "cost": cost,
    }
    if not args.skip_quality:
        quality: dict[str, dict] = {}
        runs = [("naive", None, None)] + [(n, b, t) for b, t in ((0.999, 2.0), (0.99, 1.0))
                                           for n in ("taco_exact", "taco", "taco_bf16")]
        for name, beta, tau in runs:
            key = name if beta is None else f"{name}(beta={beta},tau={tau})"
            seeds = [quality_run(args, name, beta or 0.0, tau or 1.0, seed) for seed in range(args.q_seeds)]
            quality[key] = {"final_mean_loss_per_seed": [s["final_mean_loss"] for s in seeds],
                            "final_mean_loss": statistics.mean(s["final_mean_loss"] for s in seeds),
                            "curve_seed0": seeds[0]["curve"], **({"weights_seed0": seeds[0]["weights"]}
                                                                  if "weights" in seeds[0] else {})}
            print(f"{key:32s} final held-out loss {quality[key]['final_mean_loss']:.4f}", flush=True)
        result["quality_setup"] = {"model": "BertModel from BertConfig, random weights", "hidden": args.q_hidden,
                                   "layers": args.q_layers, "vocab": args.q_vocab, "tasks": k,
                                   "task": "query -> passage under a task-specific token permutation, in-batch CE",
                                   "steps": args.q_steps, "batch_per_task": args.q_batch, "lr": args.q_lr,
                                   "seeds": args.q_seeds, "optimizer": "AdamW"}
        result["quality"] = quality
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
