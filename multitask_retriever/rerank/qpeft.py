"""Q-PEFT (Peng et al. 2024, arXiv 2404.04522): a frozen LM scores a passage by the
likelihood of the query given the passage and a prompt; a small query-dependent module
builds part of that prompt from the query and the document.

* Q-PEFT-R: the k document tokens whose (frozen) embeddings best match a query token
  (cosine, max over query tokens, distinct tokens) are the contextual clues; they pass a
  trainable, zero-initialised residual projection. The selection is not differentiable.
* Q-PEFT-A: multi-head attention replaces the selection: the query's token embeddings,
  projected, attend over every document token, giving one clue vector per query token;
  differentiable end to end. Only the module trains; the LM stays frozen.

Sources: the paper's abstract and the authors' released code (the full method section was
not available here). Clues come from the scored passage by default (`context="passage"`, as
the released code); `context="candidates"` reads the query's whole candidate list instead.
Differences from the released code, kept on purpose or for lack of CPU time to tune:
the learned soft prompt and the clues both sit between the passage and the instruction
("Passage: d [prompt][clues] Please write a question ... Question: q"), not prompt-first
with a "hints:" wrapper; Q-PEFT-R's clue transform is a residual linear map over frozen
embeddings, not a trainable embedding copy and a two-layer network; the loss is
`ListwiseQueryLikelihood`, not the released pairwise hinge; k = 8 and 4 heads by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .llm_scoring import LLMReranker, LLMScoringConfig


@dataclass
class QPeftConfig(LLMScoringConfig):
    """Q-PEFT's module on top of the scoring config; saved in mtr_reranker.json."""

    num_prompt_tokens: int = field(default=4, metadata={"help": "learned, query-independent soft tokens", "min": 0})
    num_clues: int = field(default=8, metadata={
        "help": "k: clue tokens of Q-PEFT-R (Q-PEFT-A gives one per query token)", "min": 1})
    num_heads: int = field(default=4, metadata={"help": "attention heads of Q-PEFT-A", "min": 1})
    max_context_tokens: int = field(default=1024, metadata={
        "help": "tokens of the concatenated candidate passages the module reads", "min": 1})
    context: str = field(default="passage", metadata={
        "help": "passage (clues from the scored passage, as the authors' code) | candidates (from the "
                "query's whole candidate list, concatenated: the same clues for every passage)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context not in ("candidates", "passage"):
            raise ValueError(f"context must be candidates or passage, got {self.context!r}")


class _QPeftBase(LLMReranker):
    """Shared parts: the learned soft prompt, the frozen embeddings and the clue context."""

    config_class = QPeftConfig
    soft_position = "before_instruction"

    def __init__(self, lm: nn.Module, tokenizer: Any, config: QPeftConfig):
        super().__init__(lm, tokenizer, config)
        embed = self.scorer.lm.get_input_embeddings().weight
        d = embed.shape[1]
        # init the static prompt from embeddings of random vocabulary tokens (Lester et al. 2021)
        rows = torch.randint(0, embed.shape[0], (config.num_prompt_tokens,))
        self.prompt = nn.Parameter(embed.detach()[rows].clone().float())
        self.hidden = d
        special = set(tokenizer.all_special_ids)
        self._special = torch.tensor(sorted(special), dtype=torch.long)

    def _embed(self, ids: list[int]) -> torch.Tensor:
        emb = self.scorer.lm.get_input_embeddings()
        return emb(torch.tensor(ids, dtype=torch.long, device=self.device)).detach().float()

    def _context_ids(self, passages: list[list[int]]) -> list[int]:
        """The candidate passages' tokens, concatenated and capped, without special tokens."""
        ids: list[int] = []
        special = set(self._special.tolist())
        for p in passages:
            ids.extend(t for t in p if t not in special)
            if len(ids) >= self.config.max_context_tokens:
                return ids[: self.config.max_context_tokens]
        return ids

    def query_context(self, query: str, query_ids: list[int], passages: list[list[int]]) -> Any:
        if self.config.context != "candidates":
            return None
        return self.clues(query_ids, self._context_ids(passages))

    def soft_prompts(self, contexts: list[Any], query_ids: list[list[int]],
                     passage_ids: list[list[int]]) -> list[torch.Tensor]:
        if self.config.context == "passage":
            clues = [self.clues(q, self._context_ids([p])) for q, p in zip(query_ids, passage_ids)]
        else:
            clues = contexts
        return [torch.cat([self.prompt.to(c.dtype), c]) for c in clues]  # each [n_prompt + n_clues, d]

    def clues(self, query_ids: list[int], context_ids: list[int]) -> torch.Tensor:
        """[n_clues, hidden] query-dependent clue vectors from the context tokens."""
        raise NotImplementedError


class QPeftRReranker(_QPeftBase):
    """Q-PEFT-R: top-k context tokens by embedding match with the query, as clues."""

    method = "qpeft-r"

    def __init__(self, lm: nn.Module, tokenizer: Any, config: QPeftConfig):
        super().__init__(lm, tokenizer, config)
        self.clue_proj = nn.Linear(self.hidden, self.hidden)
        nn.init.zeros_(self.clue_proj.weight)  # starts as the plain clue tokens' embeddings
        nn.init.zeros_(self.clue_proj.bias)

    def select(self, query_ids: list[int], context_ids: list[int]) -> list[int]:
        """Ids of the k distinct context tokens most similar (cosine, max over query tokens)
        to the query; repeats fill in when the context has fewer than k distinct tokens."""
        k = self.config.num_clues
        if not context_ids:
            context_ids = list(query_ids)  # no candidate text: the query's own tokens
        with torch.no_grad():
            q = F.normalize(self._embed(query_ids), dim=-1)
            c = F.normalize(self._embed(context_ids), dim=-1)
            sims = (c @ q.T).max(dim=1).values
        ranked = [context_ids[i] for i in sims.argsort(descending=True, stable=True).tolist()]
        chosen = list(dict.fromkeys(ranked))[:k]
        i = 0
        while len(chosen) < k:
            chosen.append(ranked[i % len(ranked)])
            i += 1
        return chosen

    def clues(self, query_ids: list[int], context_ids: list[int]) -> torch.Tensor:
        e = self._embed(self.select(query_ids, context_ids))
        return e + self.clue_proj(e)


class QPeftAReranker(_QPeftBase):
    """Q-PEFT-A: the query's tokens attend (multi-head) over every context token; one clue
    vector per query token."""

    method = "qpeft-a"

    def __init__(self, lm: nn.Module, tokenizer: Any, config: QPeftConfig):
        super().__init__(lm, tokenizer, config)
        d = self.hidden
        if d % config.num_heads:
            raise ValueError(f"num_heads ({config.num_heads}) must divide the LM's hidden size {d}")
        self.query_proj = nn.Linear(d, d)
        nn.init.eye_(self.query_proj.weight)  # starts with the query tokens' own embeddings
        nn.init.zeros_(self.query_proj.bias)
        self.attention = nn.MultiheadAttention(d, config.num_heads, batch_first=True)
        self.last_attention: torch.Tensor | None = None  # [query tokens, context] of the latest call

    def clues(self, query_ids: list[int], context_ids: list[int]) -> torch.Tensor:
        if not context_ids:
            context_ids = list(query_ids)
        queries = self.query_proj(self._embed(query_ids))[None]
        context = self._embed(context_ids)[None]
        out, weights = self.attention(queries, context, context, need_weights=True)
        self.last_attention = weights[0]
        return out[0]
