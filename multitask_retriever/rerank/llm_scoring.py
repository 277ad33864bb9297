"""Relevance from a frozen LM: the (mean or summed) log-likelihood of the query's tokens
given an instruction, the passage and optional soft-prompt vectors (UPR; Sachan et al. 2022).

`LLMScorer` works for causal LMs (GPT-2, Llama, Qwen style: one sequence, passage then
query) and seq2seq LMs (T5 family: passage into the encoder, query as decoder target).
Soft vectors fill reserved slots either in the input embeddings or, with `soft_layer`,
in the hidden states entering one chosen transformer layer. Pairs are batched by length
under a token budget, one forward pass per batch. `LLMReranker` is the shared base of
every LLM reranker: loading, saving only the trained parameters, and reranking.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from kilt.tasks import check_queries, keeps_end, query_window

from ..config import check_fields
from ..devices import DTYPE_HELP, autocast, check_dtype_name
from .base import (Reranker, check_rows, group_size, make_config, read_reranker_meta, split_rows,
                   write_reranker_meta)

WEIGHTS_NAME = "module.safetensors"
#: where a pair's soft slots go: all at the start (after BOS), all between the passage and the
#: instruction, or "split": the first `start_slots` at the start and the rest before the instruction
SOFT_POSITIONS = ("start", "before_instruction", "split")


#: what the LM is asked to write after a passage, by KILT task kind: the form that kind's queries take
KIND_INSTRUCTIONS = {
    "fact checking": "\nPlease write a claim that this passage supports or refutes.\nClaim:",
    "dialogue": "\nPlease write the next turn of a conversation about this passage.\nTurn:",
    "open-domain QA": "\nPlease write a question based on this passage.\nQuestion:",
    "slot filling": "\nPlease write the subject and the relation of a fact this passage states.\nSubject [SEP] relation:",
    "entity linking": "\nPlease write a text that mentions the entity this passage is about.\nText:",
}


def _default_task_instructions() -> dict[str, str]:
    """One instruction per KILT task, from its kind (kilt.tasks)."""
    from kilt.tasks import TASKS

    return {name: KIND_INSTRUCTIONS[task.kind] for name, task in TASKS.items() if task.kind in KIND_INSTRUCTIONS}


@dataclass
class LLMScoringConfig:
    """How a (query, passage) pair becomes a prompt and a score; saved in mtr_reranker.json."""

    llm: str = field(default="", metadata={"help": "LM name or folder; empty = the packaged SmolLM2-135M"})
    prefix: str = field(default="Passage: ", metadata={"help": "text before the passage"})
    instruction: str = field(default="\nPlease write a question based on this passage.\nQuestion:",
                             metadata={"help": "text between the passage and the query of a call without a task"})
    task_instructions: dict[str, str] = field(default_factory=_default_task_instructions, metadata={
        "help": "task -> instruction asking for the query in that task's form (a claim for fever, the next "
                "turn for wow, ...); tasks not listed use `instruction`"})
    max_passage_tokens: int = field(default=256, metadata={"help": "longer passages are cut (one warning)", "min": 1})
    max_query_tokens: int = field(default=64, metadata={"help": "longer queries are cut (one warning)", "min": 1})
    query_keep: str = field(default="auto", metadata={
        "help": "what a cut query keeps: auto (a dialogue its latest turns, other tasks their start) | start | "
                "end; an entity mention always stays"})
    reduction: str = field(default="mean", metadata={"help": "mean | sum of the query tokens' log-probs"})
    max_batch_tokens: int = field(default=8192, metadata={"help": "padded tokens per forward pass", "min": 1})
    inference_dtype: str = field(default="auto", metadata={
        "help": "autocast dtype: " + DTYPE_HELP})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be mean or sum, got {self.reduction!r}")
        keeps_end(None, self.query_keep)  # ValueError naming the choices
        check_dtype_name(self.inference_dtype, "inference_dtype")


@dataclass
class _Pair:
    """Token ids of one prompt: `context` (with `soft_mask` marking the soft slots) and `target`."""

    context: list[int]
    soft_mask: list[bool]
    target: list[int]


def load_lm(name_or_path: str) -> tuple[nn.Module, Any]:
    """A frozen LM (causal or seq2seq, by its config) and its tokenizer, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from ..models import check_model_path, named_weight_errors, own_memory, resolve_llm

    path = check_model_path(resolve_llm(name_or_path))
    config = AutoConfig.from_pretrained(path)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with named_weight_errors(path):
        lm = own_memory(cls.from_pretrained(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm.eval()
    lm.requires_grad_(False)
    return lm, tokenizer


def transformer_layers(lm: nn.Module) -> nn.ModuleList:
    """The blocks that read the prompt: the decoder's (causal LM) or the encoder's (seq2seq)."""
    root = lm.get_encoder() if lm.config.is_encoder_decoder else lm
    lists = [m for m in root.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(lm).__name__}: found no list of transformer layers")
    return max(lists, key=len)


class LLMScorer(nn.Module):
    """Scores (query, passage) pairs by query log-likelihood with a frozen LM."""

    def __init__(self, lm: nn.Module, tokenizer: Any, config: LLMScoringConfig,
                 soft_position: str = "start", soft_layer: int | None = None, start_slots: int = 0):
        super().__init__()
        if soft_position not in SOFT_POSITIONS:
            raise ValueError(f"soft_position must be one of {SOFT_POSITIONS}, got {soft_position!r}")
        self.lm = lm
        self.tokenizer = tokenizer
        self.config = config
        self.soft_position = soft_position
        self.start_slots = start_slots  # used by soft_position "split"
        self.seq2seq = bool(lm.config.is_encoder_decoder)
        self._warned: set[str] = set()
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (soft vectors, slot mask) for the hook
        self.soft_layer = soft_layer
        if soft_layer is not None:
            layers = transformer_layers(lm)
            if not 0 <= soft_layer < len(layers):
                raise ValueError(f"soft_layer {soft_layer} is outside the LM's {len(layers)} layers")
            layers[soft_layer].register_forward_pre_hook(self._insert_at_layer, with_kwargs=True)
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        self._bos = [ids[0]] if (not self.seq2seq and tokenizer.bos_token_id is not None
                                 and ids and ids[0] == tokenizer.bos_token_id) else []
        self._eos = [tokenizer.eos_token_id] if self.seq2seq and tokenizer.eos_token_id is not None else []
        self._prefix = self._ids(config.prefix)
        self._instructions = {None: self._ids(config.instruction)}
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        #: the LM's position limit (None: relative positions, e.g. T5), the budget of a whole prompt
        self.max_positions: int | None = getattr(lm.config, "max_position_embeddings", None)

    @property
    def hidden_size(self) -> int:
        return self.lm.get_input_embeddings().embedding_dim

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def train(self, mode: bool = True) -> "LLMScorer":
        """The LM stays in eval mode (no dropout): it is frozen and must score deterministically."""
        super().train(mode)
        self.lm.eval()
        return self

    # ---------------------------------------------------------------- tokens
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _warn_cut(self, what: str, limit: int) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(f"{what} longer than {limit} tokens are truncated", stacklevel=4)

    def _cut(self, ids: list[int], limit: int, what: str) -> list[int]:
        if len(ids) > limit:
            self._warn_cut(what, limit)
            return ids[:limit]
        return ids

    def passage_ids(self, passages: Sequence[str]) -> list[list[int]]:
        """Token ids of passages, cut at `max_passage_tokens` (warned about once)."""
        enc = self.tokenizer(list(passages), add_special_tokens=False)["input_ids"]
        return [self._cut(ids, self.config.max_passage_tokens, "passages") for ids in enc]

    def query_ids(self, queries: Sequence[str], tasks: Sequence[str | None] | None = None) -> list[list[int]]:
        """Token ids of queries (of `tasks`), cut to `max_query_tokens` by the task-aware
        `kilt.tasks.query_window` (warned about once); an empty query is an error."""
        queries = check_queries(queries)
        enc = self.tokenizer(queries, add_special_tokens=False, return_offsets_mapping=True)
        limit = self.config.max_query_tokens
        out = []
        for query, ids, offsets, task in zip(queries, enc["input_ids"], enc["offset_mapping"],
                                             tasks or [None] * len(queries)):
            if len(ids) > limit:
                self._warn_cut("queries", limit)
                first, stop = query_window(query, offsets, limit, task, self.config.query_keep)
                ids = ids[first:stop]
            out.append(ids)
        return out

    def instruction_ids(self, task: str | None) -> list[int]:
        """Token ids of the instruction for `task` (the task's own, else the general one)."""
        if task not in self._instructions:
            text = self.config.task_instructions.get(task) if task is not None else None
            self._instructions[task] = self._ids(text) if text is not None else self._instructions[None]
        return self._instructions[task]

    def build(self, query: list[int], passage: list[int], n_soft: int, task: str | None = None) -> _Pair:
        """The prompt of one pair with `n_soft` soft slots at `soft_position` and `task`'s
        instruction; the passage is cut to what the (already cut) query, the slots and the
        prompt text leave of `max_positions`."""
        instruction = self.instruction_ids(task)
        if self.max_positions is not None:
            fixed = len(self._bos) + len(self._prefix) + len(instruction) + len(self._eos) + n_soft
            room = self.max_positions - fixed - (0 if self.seq2seq else len(query))
            if room < 1:
                raise ValueError(f"{len(query)} query tokens, {n_soft} soft tokens and {fixed - n_soft} prompt "
                                 f"tokens leave no room for a passage within the LM's {self.max_positions} "
                                 f"positions; lower max_query_tokens")
            if len(passage) > room:
                if "positions" not in self._warned:
                    self._warned.add("positions")
                    warnings.warn(f"passages are cut further so that prompts fit the LM's {self.max_positions} "
                                  f"positions", stacklevel=4)
                passage = passage[:room]
        head = {"start": n_soft, "before_instruction": 0}.get(self.soft_position, min(self.start_slots, n_soft))
        parts: list[tuple[list[int], bool]] = [
            (self._bos, False), ([self._pad] * head, True), (self._prefix, False), (passage, False),
            ([self._pad] * (n_soft - head), True), (instruction, False), (self._eos, False)]
        context = [t for ids, _ in parts for t in ids]
        mask = [flag for ids, flag in parts for _ in ids]
        return _Pair(context, mask, query)

    # ---------------------------------------------------------------- scoring
    def score_pairs(self, queries: Sequence[list[int]], passages: Sequence[list[int]],
                    soft: torch.Tensor | Sequence[torch.Tensor] | None = None,
                    tasks: Sequence[str | None] | None = None) -> torch.Tensor:
        """Scores [N] of N token-id pairs; `soft` fills each pair's slots: [N, n_soft, hidden],
        or a list of N [n_i, hidden] tensors when the pairs' soft prompts differ in length.

        Pairs are sorted by length and cut into batches of at most `max_batch_tokens`
        padded tokens; the result keeps the input order and stays differentiable.
        """
        n = len(queries)
        if n == 0:
            return torch.zeros(0, device=self.device)
        if soft is not None and len(soft) != n:
            raise ValueError(f"{len(soft)} soft prompts for {n} pairs")
        counts = [0 if soft is None else int(soft[i].shape[0]) for i in range(n)]
        tasks = list(tasks) if tasks is not None else [None] * n
        pairs = [self.build(q, p, c, t) for q, p, c, t in zip(queries, passages, counts, tasks)]
        lengths = [len(p.context) + len(p.target) for p in pairs]
        order = sorted(range(n), key=lambda i: lengths[i])
        chunks, current = [], []
        for i in order:
            if current and lengths[i] * (len(current) + 1) > self.config.max_batch_tokens:
                chunks.append(current)
                current = []
            current.append(i)
        chunks.append(current)
        outputs = [self._forward([pairs[i] for i in chunk], _rows(soft, chunk)) for chunk in chunks]
        flat = torch.cat(outputs)
        position = torch.empty(n, dtype=torch.long)
        position[torch.tensor([i for chunk in chunks for i in chunk])] = torch.arange(n)
        return flat[position.to(flat.device)]

    def _forward(self, pairs: list[_Pair], soft: torch.Tensor | None) -> torch.Tensor:
        device = self.device
        embed = self.lm.get_input_embeddings()
        width = max(len(p.context) + (0 if self.seq2seq else len(p.target)) for p in pairs)
        ids = torch.full((len(pairs), width), self._pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        slots = torch.zeros(ids.shape, dtype=torch.bool)
        for row, p in enumerate(pairs):
            seq = p.context if self.seq2seq else p.context + p.target
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            slots[row, : len(p.context)] = torch.tensor(p.soft_mask, dtype=torch.bool)
        ids, attention, slots = ids.to(device), attention.to(device), slots.to(device)
        inputs = embed(ids)
        if soft is not None and soft.numel() > 0:
            soft = soft.to(device=device, dtype=inputs.dtype)
            if self.soft_layer is None:
                inputs = inputs.masked_scatter(slots[..., None], soft)
            else:
                self._pending = (soft, slots)
        try:
            if self.seq2seq:
                return self._seq2seq_scores(inputs, attention, pairs)
            return self._causal_scores(inputs, attention, pairs)
        finally:
            self._pending = None

    def _insert_at_layer(self, module: nn.Module, args: tuple, kwargs: dict):
        """Forward pre-hook: the soft vectors replace the slot positions' hidden states."""
        if self._pending is None:
            return None
        soft, slots = self._pending
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if hidden.shape[:2] != slots.shape:  # e.g. a T5 decoder block: not our sequence
            return None
        hidden = hidden.masked_scatter(slots[..., None], soft.to(hidden.dtype))
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs

    def _reduce(self, token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        total = (token_logprobs * mask).sum(-1)
        return total if self.config.reduction == "sum" else total / mask.sum(-1).clamp(min=1)

    def _causal_scores(self, inputs: torch.Tensor, attention: torch.Tensor, pairs: list[_Pair]) -> torch.Tensor:
        base = getattr(self.lm, self.lm.base_model_prefix)
        hidden = base(inputs_embeds=inputs, attention_mask=attention, use_cache=False).last_hidden_state
        q_len = max(len(p.target) for p in pairs)
        index = torch.zeros(len(pairs), q_len, dtype=torch.long)
        targets = torch.full((len(pairs), q_len), self._pad, dtype=torch.long)
        mask = torch.zeros(len(pairs), q_len)
        for row, p in enumerate(pairs):
            start = len(p.context) - 1  # the state before each query token predicts it
            index[row, : len(p.target)] = torch.arange(start, start + len(p.target))
            targets[row, : len(p.target)] = torch.tensor(p.target)
            mask[row, : len(p.target)] = 1
        device = hidden.device
        picked = hidden.gather(1, index.to(device)[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = self.lm.get_output_embeddings()(picked).float()
        logprobs = logits.log_softmax(-1).gather(-1, targets.to(device)[..., None])[..., 0]
        return self._reduce(logprobs, mask.to(device))

    def _seq2seq_scores(self, inputs: torch.Tensor, attention: torch.Tensor, pairs: list[_Pair]) -> torch.Tensor:
        q_len = max(len(p.target) for p in pairs)
        labels = torch.full((len(pairs), q_len), -100, dtype=torch.long)
        for row, p in enumerate(pairs):
            labels[row, : len(p.target)] = torch.tensor(p.target)
        labels = labels.to(inputs.device)
        logits = self.lm(inputs_embeds=inputs, attention_mask=attention, labels=labels, use_cache=False).logits
        mask = labels != -100
        logprobs = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        return self._reduce(logprobs, mask.float())

    def autocast(self):
        """Autocast per `inference_dtype` on the LM's device (none for float32, as auto is on CPU)."""
        return autocast(self.device, self.config.inference_dtype)


def _rows(soft: torch.Tensor | Sequence[torch.Tensor] | None, rows: list[int]) -> torch.Tensor | None:
    """The soft vectors of `rows`, in row order (one [sum n_i, hidden] tensor for a list)."""
    if soft is None:
        return None
    if isinstance(soft, torch.Tensor):
        return soft[rows]
    return torch.cat([soft[i] for i in rows])


# ---------------------------------------------------------------------------- the shared reranker base
class LLMReranker(Reranker):
    """Base of every LLM reranker: a frozen `LLMScorer` plus a small trained module.

    Subclasses set `method`, `config_class`, and override `soft_prompts` (per-pair soft
    vectors) and, when the vectors depend on the whole candidate list, `query_context`.
    """

    config_class: ClassVar[type] = LLMScoringConfig
    soft_position: ClassVar[str] = "start"
    training_loss: ClassVar[str] = "lce+ql"

    def __init__(self, lm: nn.Module, tokenizer: Any, config: LLMScoringConfig, soft_layer: int | None = None,
                 start_slots: int = 0):
        super().__init__()
        self.config = config
        lm.requires_grad_(False)
        self.scorer = LLMScorer(lm, tokenizer, config, soft_position=self.soft_position, soft_layer=soft_layer,
                                start_slots=start_slots)

    @classmethod
    def create(cls, model: str = "", llm: str | None = None, **options: Any) -> "LLMReranker":
        """A fresh reranker over the LM `model` (empty: the packaged SmolLM2) with config `options`;
        `llm=` is the deprecated name of `model`, as every reranker's `create` takes `model`."""
        if llm is not None:
            if model:
                raise TypeError("create() takes the LM as model=; llm= (deprecated) names it too")
            warnings.warn("LLMReranker.create(llm=...) is deprecated; pass model=", DeprecationWarning, stacklevel=2)
            model = llm
        config = cls._make_config({**options, "llm": model})
        lm, tokenizer = load_lm(config.llm)
        return cls(lm, tokenizer, config)

    @classmethod
    def _make_config(cls, values: dict[str, Any]):
        return make_config(cls.config_class, values)

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    def train(self, mode: bool = True) -> "LLMReranker":
        super().train(mode)
        self.scorer.lm.eval()
        return self

    # ---------------------------------------------------------------- what subclasses provide
    def query_context(self, query: str, query_ids: list[int], passages: list[list[int]]) -> Any:
        """Per-query state shared by all its passages (e.g. clues from the candidate list)."""
        return None

    def soft_prompts(self, contexts: list[Any], query_ids: list[list[int]],
                     passage_ids: list[list[int]]) -> torch.Tensor | list[torch.Tensor] | None:
        """Soft vectors for N pairs (pair i has query context contexts[i]): [N, n_soft, hidden],
        or N tensors [n_i, hidden] of different lengths."""
        return None

    # ---------------------------------------------------------------- scoring
    def _score_flat(self, contexts: list[Any], q_ids: list[list[int]], p_ids: list[list[int]],
                    tasks: Sequence[str | None] | None = None) -> torch.Tensor:
        soft = self.soft_prompts(contexts, q_ids, p_ids)
        return self.scorer.score_pairs(q_ids, p_ids, soft, tasks)

    def score(self, queries: Sequence[str], passages: Sequence[Sequence[str]],
              tasks: Sequence[str | None] | None = None) -> torch.Tensor:
        """Differentiable scores [B, n]; a query's context is built from its own row."""
        n = group_size(queries, passages)
        if n == 0:
            return torch.zeros(len(queries), 0, device=self.device)
        q_ids = self.scorer.query_ids(queries, tasks)
        rows = [self.scorer.passage_ids(row) for row in passages]
        contexts = [self.query_context(q, qi, row) for q, qi, row in zip(queries, q_ids, rows)]
        flat_ctx = [c for c in contexts for _ in range(n)]
        flat_q = [qi for qi in q_ids for _ in range(n)]
        flat_p = [p for row in rows for p in row]
        flat_t = [t for t in (tasks or [None] * len(queries)) for _ in range(n)]
        return self._score_flat(flat_ctx, flat_q, flat_p, flat_t).view(len(queries), n)

    def rerank_many(self, queries: Sequence[str], passages: Sequence[Sequence[str]], batch_size: int = 32,
                    tasks: Sequence[str | None] | None = None) -> list[list[float]]:
        """Scores of passages[i] for queries[i]; each query's context sees all its passages, and the
        pairs of every query go through the LM together, length-sorted (`max_batch_tokens`)."""
        check_rows(queries, passages)
        q_ids = self.scorer.query_ids(queries, tasks) if queries else []
        rows = [self.scorer.passage_ids(row) if len(row) else [] for row in passages]
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), self.scorer.autocast():
                contexts = [self.query_context(q, qi, row) for q, qi, row in zip(queries, q_ids, rows)]
                flat_ctx = [c for c, row in zip(contexts, rows) for _ in row]
                flat_q = [qi for qi, row in zip(q_ids, rows) for _ in row]
                flat_p = [p for row in rows for p in row]
                flat_t = [t for t, row in zip(tasks or [None] * len(rows), rows) for _ in row]
                flat = self._score_flat(flat_ctx, flat_q, flat_p, flat_t).float().tolist() if flat_p else []
        finally:
            self.train(was_training)
        return split_rows(flat, rows)

    # ---------------------------------------------------------------- saving
    def _module_state(self) -> dict[str, torch.Tensor]:
        """What `save_pretrained` writes: the trained parameters by name."""
        return {name: p.detach().cpu().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def _load_module_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of `_module_state` (its keys already checked)."""
        with torch.no_grad():
            params = dict(self.named_parameters())
            for name, value in state.items():
                params[name].copy_(value)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the trained parameters (safetensors) and mtr_reranker.json; never the LM itself."""
        from safetensors.torch import save_file

        from safeio.atomic import atomic_directory

        with atomic_directory(path) as tmp:
            state = self._module_state()
            if state:
                save_file(state, str(tmp / WEIGHTS_NAME))
            write_reranker_meta(tmp, self.method, self.config,
                                trainable_parameters=self.num_trainable_parameters())

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "LLMReranker":
        """Rebuild from a saved folder: the LM from `config.llm`, the trained parameters from the folder."""
        from safetensors.torch import load_file

        from ..models import named_weight_errors

        meta = read_reranker_meta(path, cls.method)
        config = cls._make_config({**meta.get("config", {}), **overrides})
        lm, tokenizer = load_lm(config.llm)
        reranker = cls(lm, tokenizer, config)
        weights = Path(path) / WEIGHTS_NAME
        expected = set(reranker._module_state())
        with named_weight_errors(weights):
            state = load_file(str(weights)) if weights.is_file() else {}
        if set(state) != expected:
            raise ValueError(f"{path}: saved parameters {sorted(set(state) ^ expected)[:5]} do not match "
                             f"the {cls.method} module")
        reranker._load_module_state(state)
        return reranker
