"""Q-PEFT (Peng et al. 2024, arXiv 2404.04522): a frozen LM scores a passage by the
likelihood of the query given the passage and a prompt; a small query-dependent module
builds part of that prompt from the query and the document.

* Q-PEFT-R: the k passage tokens whose frozen embeddings best match the module's embedding
  of a query token (cosine, max over query tokens, distinct tokens) are the contextual
  clues. Candidates that are (part of) a query word, stop words or symbols are skipped
  first (`clue_filter`). The selection is not differentiable; the clues' embeddings are.
* Q-PEFT-A: multi-head attention (with dropout) replaces the selection: the query's token
  embeddings attend over every passage token, giving one clue vector per query token;
  differentiable end to end.

Both, as the authors' released code (github.com/zhiyuanpeng/Q-PEFT, its vendored
peft/tuners/prompt_tuning.py): the module reads tokens through its own trainable copy of
the LM's input embeddings (the passage side of the similarity and of the attention stays
the frozen LM's); the clues are wrapped in the text "hints: ... \\n" on a line of their own,
embedded by that copy, and the whole block passes a Linear-ReLU-Linear network. The prompt
is "[BOS] [soft prompt] Passage: d [\\nhints: clues \\n] instruction query", the soft prompt
starting from the token embeddings of the instruction text. Clues come from the scored
passage by default (`context="passage"`); `context="candidates"` reads the query's whole
candidate list instead. Only the module trains; the LM stays frozen.

Differences from the released code, kept on purpose:
- the embedding copy is stored as its change from the LM's table, zero at the start: it
  computes the same as a copy, weight decay pulls it towards the LM's embeddings rather than
  zero, and a checkpoint holds only the rows that training moved (a full copy of a large
  vocabulary would outweigh the rest of the module many times over); it still trains, and
  counts, as vocabulary x hidden parameters;
- the Linear-ReLU-Linear is residual with its last layer zero-initialised (`mlp="residual"`),
  so the untrained module is exactly the text prompt "hints: clue tokens"; the released plain
  network from a random start is `mlp="plain"`;
- the soft prompt trains (the released runs kept it frozen at its text) and has
  `num_prompt_tokens` vectors, the init text cycled or cut to that length;
- the wrapper opens with its own line break ("\\nhints:"), with no trailing space that a BPE
  tokenizer would make a token of its own (the released "hints: " follows the passage's
  line break);
- Q-PEFT-R's default filter drops query words, stop words and symbols (the released runs
  dropped only repeats; `clue_filter=[]` does that); when fewer than k candidates remain they
  repeat in order rather than being resampled at random, so scores are deterministic;
- the module reads the passage's tokens only, not the prompt text around them; Q-PEFT-A's
  attention masks nothing else (as the released runs);
- the loss is the trainer's default `lce+ql`; the released pairwise hinge plus query
  likelihood is `ql+hinge` in rerank/losses.py; k = 8 clues and 4 heads by default (the
  released runs: 10-20 clues, 2 heads).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .llm_scoring import LLMReranker, LLMScoringConfig

#: frequent English function words, never worth a clue slot (compared lower-cased, letters only)
STOP_WORDS = frozenset("""
a about an and are as at be been but by can could did do does for from had has have he her him his
how i if in into is it its me my no not of on or our s she so such t than that the their them then
there these they this those to too us was we were what when where which while who whom why will with
would you your
""".split())
CLUE_FILTERS = ("query", "stopwords", "symbols")
MLP_KINDS = ("residual", "plain")
_DELTA_ROWS, _DELTA_VALUES = "embedding_delta.rows", "embedding_delta.values"


@dataclass
class QPeftConfig(LLMScoringConfig):
    """Q-PEFT's module on top of the scoring config; saved in mtr_reranker.json."""

    num_prompt_tokens: int = field(default=4, metadata={"help": "learned, query-independent soft tokens", "min": 0})
    prompt_init: str = field(default="", metadata={
        "help": "text whose token embeddings (cycled or cut to num_prompt_tokens) start the soft prompt; "
                "empty: the instruction"})
    num_clues: int = field(default=8, metadata={
        "help": "k: clue tokens of Q-PEFT-R (Q-PEFT-A gives one per query token)", "min": 1})
    num_heads: int = field(default=4, metadata={"help": "attention heads of Q-PEFT-A", "min": 1})
    dropout: float = field(default=0.1, metadata={"help": "attention dropout of Q-PEFT-A (training only)",
                                                  "min": 0, "below": 1})
    clue_prefix: str = field(default="\nhints:", metadata={"help": "text before the clues (embedded by the module)"})
    clue_suffix: str = field(default="\n", metadata={"help": "text after the clues (embedded by the module)"})
    clue_filter: list[str] = field(default_factory=lambda: list(CLUE_FILTERS), metadata={
        "help": "Q-PEFT-R candidates skipped: query (a query word or part of one) | stopwords | symbols (no "
                "letter or digit); [] keeps all (distinct tokens only, as the released runs)"})
    mlp: str = field(default="residual", metadata={
        "help": "residual (x + MLP(x), starting as the identity) | plain (MLP(x), as the released code)"})
    max_context_tokens: int = field(default=1024, metadata={
        "help": "tokens of the concatenated candidate passages the module reads", "min": 1})
    context: str = field(default="passage", metadata={
        "help": "passage (clues from the scored passage, as the authors' code) | candidates (from the "
                "query's whole candidate list, concatenated: the same clues for every passage)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context not in ("candidates", "passage"):
            raise ValueError(f"context must be candidates or passage, got {self.context!r}")
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"mlp must be one of {MLP_KINDS}, got {self.mlp!r}")
        unknown = set(self.clue_filter) - set(CLUE_FILTERS)
        if unknown:
            raise ValueError(f"unknown clue_filter entries {sorted(unknown)}; known: {', '.join(CLUE_FILTERS)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class _QPeftBase(LLMReranker):
    """Shared parts: the soft prompt, the module's embedding copy, the wrapped clue block and
    its MLP, and the clue context."""

    config_class = QPeftConfig
    soft_position = "split"  # the soft prompt after BOS, the clue block before the instruction

    def __init__(self, lm: nn.Module, tokenizer: Any, config: QPeftConfig):
        super().__init__(lm, tokenizer, config, start_slots=config.num_prompt_tokens)
        table = self.scorer.lm.get_input_embeddings().weight
        d = table.shape[1]
        self.hidden = d
        self.prompt = nn.Parameter(self._embed(self._prompt_init_ids()).detach().clone())
        self.embedding_delta = nn.Parameter(torch.zeros(table.shape, dtype=torch.float32, device=table.device))
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        if config.mlp == "residual":
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
        self._clue_prefix = self.scorer._ids(config.clue_prefix)
        self._clue_suffix = self.scorer._ids(config.clue_suffix)
        self._special = set(tokenizer.all_special_ids)

    def _prompt_init_ids(self) -> list[int]:
        """`num_prompt_tokens` ids of the init text (default: the instruction), cycled or cut."""
        n = self.config.num_prompt_tokens
        ids = self.scorer._ids((self.config.prompt_init or self.config.instruction).strip())
        if n and not ids:
            raise ValueError("prompt_init (or the instruction) has no tokens to start the soft prompt from")
        return [ids[i % len(ids)] for i in range(n)]

    # ---------------------------------------------------------------- embeddings
    def _embed(self, ids: list[int]) -> torch.Tensor:
        """The frozen LM's input embeddings of `ids` (float32, no gradient)."""
        emb = self.scorer.lm.get_input_embeddings()
        return emb(torch.tensor(ids, dtype=torch.long, device=self.device)).detach().float()

    def _module_embed(self, ids: list[int]) -> torch.Tensor:
        """The module's trainable embeddings of `ids`: the LM's plus the learned change."""
        index = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self._embed(ids) + self.embedding_delta[index]

    # ---------------------------------------------------------------- context and prompts
    def _context_ids(self, passages: list[list[int]]) -> list[int]:
        """The candidate passages' tokens, concatenated and capped, without special tokens."""
        ids: list[int] = []
        for p in passages:
            ids.extend(t for t in p if t not in self._special)
            if len(ids) >= self.config.max_context_tokens:
                return ids[: self.config.max_context_tokens]
        return ids

    def query_context(self, query: str, query_ids: list[int], passages: list[list[int]]) -> Any:
        if self.config.context != "candidates":
            return None
        return self.clue_blocks([query_ids], [self._context_ids(passages)])[0]

    def soft_prompts(self, contexts: list[Any], query_ids: list[list[int]],
                     passage_ids: list[list[int]]) -> list[torch.Tensor]:
        if self.config.context == "passage":
            blocks = self.clue_blocks(query_ids, [self._context_ids([p]) for p in passage_ids])
        else:
            blocks = contexts
        return [torch.cat([self.prompt.to(b.dtype), b]) for b in blocks]  # each [n_prompt + n_block, d]

    def clue_blocks(self, query_ids: list[list[int]], context_ids: list[list[int]]) -> list[torch.Tensor]:
        """Per pair, [prefix; clues; suffix] through the MLP (residually by default). The
        module's embeddings of all pairs are looked up at once: one table-sized gradient. A pair
        without context text reads the query's own tokens."""
        context_ids = [c or list(q) for q, c in zip(query_ids, context_ids)]
        tokens = [self.module_tokens(q, c) for q, c in zip(query_ids, context_ids)]
        pre, suf = self._clue_prefix, self._clue_suffix
        embedded = self._module_embed([t for ts in tokens for t in pre + ts + suf])
        blocks = []
        for e, ts, c in zip(embedded.split([len(pre) + len(ts) + len(suf) for ts in tokens]), tokens, context_ids):
            stop = len(pre) + len(ts)
            blocks.append(torch.cat([e[: len(pre)], self.clues(e[len(pre): stop], c), e[stop:]]))
        x = torch.cat(blocks)
        out = x + self.mlp(x) if self.config.mlp == "residual" else self.mlp(x)
        return list(out.split([len(b) for b in blocks]))

    def module_tokens(self, query_ids: list[int], context_ids: list[int]) -> list[int]:
        """The tokens whose module embeddings `clues` turns into clue vectors."""
        raise NotImplementedError

    def clues(self, embedded: torch.Tensor, context_ids: list[int]) -> torch.Tensor:
        """Clue vectors [n_clues, hidden] from the module embeddings of `module_tokens`."""
        raise NotImplementedError

    # ---------------------------------------------------------------- saving
    def _module_state(self) -> dict[str, torch.Tensor]:
        """The embedding change is saved as its nonzero rows (the tokens training touched)."""
        state = super()._module_state()
        delta = state.pop("embedding_delta")
        rows = delta.any(dim=1).nonzero().flatten()
        return {**state, _DELTA_ROWS: rows, _DELTA_VALUES: delta[rows].contiguous()}

    def _load_module_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        rows, values = state.pop(_DELTA_ROWS).long(), state.pop(_DELTA_VALUES)
        if values.shape != (len(rows), self.hidden) or (len(rows) and int(rows.max()) >= len(self.embedding_delta)):
            raise ValueError(f"saved embedding rows {tuple(values.shape)} do not fit the LM's table "
                             f"{tuple(self.embedding_delta.shape)}")
        with torch.no_grad():
            self.embedding_delta.zero_()
            self.embedding_delta[rows.to(self.embedding_delta.device)] = values.to(self.embedding_delta)
        super()._load_module_state(state)


class QPeftRReranker(_QPeftBase):
    """Q-PEFT-R: top-k passage tokens by embedding match with the query, as clues."""

    method = "qpeft-r"

    def __init__(self, lm: nn.Module, tokenizer: Any, config: QPeftConfig):
        super().__init__(lm, tokenizer, config)
        self._cores: dict[int, str] = {}

    def _core(self, token: int) -> str:
        """A token's letters and digits, lower-cased (cached): how the filter compares tokens,
        whatever the tokenizer's marks for spaces and word pieces."""
        if token not in self._cores:
            text = self.scorer.tokenizer.decode([token]).lower()
            self._cores[token] = "".join(c for c in text if c.isalnum())
        return self._cores[token]

    def candidates(self, query_ids: list[int], context_ids: list[int]) -> list[int]:
        """The context tokens `clue_filter` allows: not (part of) a query word, not a stop word,
        not free of letters and digits; all of them when the filter would leave none."""
        rules = set(self.config.clue_filter)
        words = re.findall(r"[^\W_]+", self.scorer.tokenizer.decode(query_ids).lower())

        def allowed(token: int) -> bool:
            core = self._core(token)
            return not (("symbols" in rules and not core) or ("stopwords" in rules and core in STOP_WORDS)
                        or ("query" in rules and any(core in word for word in words)))

        return [t for t in context_ids if allowed(t)] or context_ids

    def select(self, query_ids: list[int], context_ids: list[int]) -> list[int]:
        """Ids of the k distinct candidates most similar (cosine, max over query tokens) to the
        query; repeats fill in when fewer than k distinct candidates exist."""
        k = self.config.num_clues
        candidates = self.candidates(query_ids, context_ids)
        with torch.no_grad():
            q = F.normalize(self._module_embed(query_ids), dim=-1)
            c = F.normalize(self._embed(candidates), dim=-1)
            sims = (c @ q.T).max(dim=1).values
        ranked = [candidates[i] for i in sims.argsort(descending=True, stable=True).tolist()]
        chosen = list(dict.fromkeys(ranked))[:k]
        return [chosen[i % len(chosen)] for i in range(k)]

    def module_tokens(self, query_ids: list[int], context_ids: list[int]) -> list[int]:
        return self.select(query_ids, context_ids)

    def clues(self, embedded: torch.Tensor, context_ids: list[int]) -> torch.Tensor:
        return embedded  # the selected tokens' module embeddings are the clues


class QPeftAReranker(_QPeftBase):
    """Q-PEFT-A: the query's tokens attend (multi-head) over every context token; one clue
    vector per query token."""

    method = "qpeft-a"

    def __init__(self, lm: nn.Module, tokenizer: Any, config: QPeftConfig):
        super().__init__(lm, tokenizer, config)
        d = self.hidden
        if d % config.num_heads:
            raise ValueError(f"num_heads ({config.num_heads}) must divide the LM's hidden size {d}")
        self.attention = nn.MultiheadAttention(d, config.num_heads, dropout=config.dropout, batch_first=True)
        self.last_attention: torch.Tensor | None = None  # [query tokens, context] of the latest call

    def module_tokens(self, query_ids: list[int], context_ids: list[int]) -> list[int]:
        return query_ids

    def clues(self, embedded: torch.Tensor, context_ids: list[int]) -> torch.Tensor:
        """The query tokens' module embeddings attend over the context's frozen embeddings."""
        context = self._embed(context_ids)[None]
        out, weights = self.attention(embedded[None], context, context, need_weights=True)
        self.last_attention = weights[0]
        return out[0]
