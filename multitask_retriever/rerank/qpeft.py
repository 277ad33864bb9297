"""Q-PEFT (Peng et al. 2024, arXiv 2404.04522): a frozen LM scores a passage by the
likelihood of the query given the passage and a prompt; a small query-dependent module
builds that prompt from the query and the query's candidate passages (concatenated).

* Q-PEFT-R: the k candidate-passage tokens whose (frozen) embeddings best match a query
  token are picked as contextual clues; the clue vectors pass a trainable, zero-initialised
  residual projection and follow a learned soft prompt. The selection is not differentiable.
* Q-PEFT-A: the selection becomes multi-head attention over every candidate token, with
  k learned slots (each shifted by the pooled query) as attention queries: differentiable
  end to end. Only the module trains; the LM stays frozen.

The prompt sits between the passage and the instruction ("Passage: d [prompt] Please
write a question ... Question: q"), and is shared by all passages of one query.
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

    num_prompt_tokens: int = field(default=4, metadata={"help": "learned, query-independent soft tokens"})
    num_clues: int = field(default=8, metadata={"help": "k: clue tokens (R) or attention slots (A)"})
    num_heads: int = field(default=4, metadata={"help": "attention heads of Q-PEFT-A"})
    max_context_tokens: int = field(default=1024, metadata={
        "help": "tokens of the concatenated candidate passages the module reads"})
    context: str = field(default="candidates", metadata={
        "help": "candidates (the query's whole candidate list, as the paper) | passage (only the scored one)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_clues < 1 or self.num_prompt_tokens < 0:
            raise ValueError("num_clues must be >= 1 and num_prompt_tokens >= 0")
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
                     passage_ids: list[list[int]]) -> torch.Tensor:
        if self.config.context == "passage":
            clue = [self.clues(q, self._context_ids([p])) for q, p in zip(query_ids, passage_ids)]
        else:
            clue = contexts
        clues = torch.stack(clue)  # [N, k, d]
        prompt = self.prompt[None].expand(clues.shape[0], -1, -1)
        return torch.cat([prompt.to(clues.dtype), clues], dim=1)

    def clues(self, query_ids: list[int], context_ids: list[int]) -> torch.Tensor:
        """[k, hidden] query-dependent clue vectors from the context tokens."""
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
    """Q-PEFT-A: multi-head attention from query-conditioned slots over every context token."""

    method = "qpeft-a"

    def __init__(self, lm: nn.Module, tokenizer: Any, config: QPeftConfig):
        super().__init__(lm, tokenizer, config)
        d = self.hidden
        if d % config.num_heads:
            raise ValueError(f"num_heads ({config.num_heads}) must divide the LM's hidden size {d}")
        scale = self.scorer.lm.get_input_embeddings().weight.detach().float().std().item()
        self.slots = nn.Parameter(torch.randn(config.num_clues, d) * scale)
        self.query_proj = nn.Linear(d, d)
        self.attention = nn.MultiheadAttention(d, config.num_heads, batch_first=True)
        self.last_attention: torch.Tensor | None = None  # [k, context] weights of the latest call

    def clues(self, query_ids: list[int], context_ids: list[int]) -> torch.Tensor:
        if not context_ids:
            context_ids = list(query_ids)
        q = self._embed(query_ids).mean(0)
        context = self._embed(context_ids)[None]
        slots = (self.slots + self.query_proj(q))[None]
        out, weights = self.attention(slots, context, context, need_weights=True)
        self.last_attention = weights[0]
        return out[0]
