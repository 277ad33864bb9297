"""Q-PEFT-R and Q-PEFT-A: training through the shared loop on mini_kilt with tiny causal and
seq2seq LMs, exact save/load, gradients end to end, clue selection, parameter counts."""
from __future__ import annotations

import pytest
import torch

from multitask_retriever.rerank import load_reranker, make_reranker
from multitask_retriever.rerank.qpeft import QPeftAReranker, QPeftConfig, QPeftRReranker
from test_llm_scoring import build_examples, check_training

D = 32  # hidden size of the tiny LMs


@pytest.fixture(scope="module")
def examples(mini_kilt, tmp_path_factory):
    return build_examples(mini_kilt, tmp_path_factory.mktemp("qpeft"))


@pytest.mark.parametrize("method", ["qpeft-a", "qpeft-r"])
@pytest.mark.parametrize("lm", ["tiny_gpt2", "tiny_t5_lm"])
def test_training_lowers_the_loss_keeps_the_lm_and_round_trips(method, lm, examples, request, tmp_path):
    torch.manual_seed(0)
    reranker = make_reranker(method, str(request.getfixturevalue(lm)), max_passage_tokens=32)
    check_training(reranker, examples, tmp_path, load_reranker, lr=2e-2)


def test_trainable_parameter_counts(tiny_gpt2):
    a = QPeftAReranker.create(str(tiny_gpt2), num_prompt_tokens=4, num_clues=8)
    # prompt 4*D, slots 8*D, query projection D*D+D, attention in/out projections 4*D*D+4*D
    assert a.num_trainable_parameters() == 4 * D + 8 * D + (D * D + D) + (4 * D * D + 4 * D)
    r = QPeftRReranker.create(str(tiny_gpt2), num_prompt_tokens=4)
    assert r.num_trainable_parameters() == 4 * D + D * D + D
    assert sum(p.numel() for p in a.scorer.lm.parameters() if p.requires_grad) == 0


def test_qpeft_a_attention_is_differentiable_end_to_end(tiny_llama):
    reranker = QPeftAReranker.create(str(tiny_llama))
    scores = reranker.score(["who wrote hamlet"], [["hamlet is by shakespeare", "paris is in france"]])
    (scores[0, 0] - scores[0, 1]).backward()
    for name in ("attention.in_proj_weight", "attention.out_proj.weight", "slots", "query_proj.weight"):
        grad = dict(reranker.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in reranker.scorer.lm.parameters())
    weights = reranker.last_attention
    assert weights.shape[0] == reranker.config.num_clues
    assert torch.allclose(weights.sum(-1), torch.ones(reranker.config.num_clues))


def test_qpeft_r_picks_distinct_context_tokens_matching_the_query(tiny_gpt2):
    reranker = QPeftRReranker.create(str(tiny_gpt2), num_clues=3)
    tok = reranker.scorer.tokenizer
    query = tok("hamlet", add_special_tokens=False)["input_ids"]
    context = tok("the play hamlet by hamlet author", add_special_tokens=False)["input_ids"]
    chosen = reranker.select(query, context)
    assert chosen[0] == query[0] and len(set(chosen)) == 3 and set(chosen) <= set(context)
    assert reranker.select(query, query) == query * 3  # too few distinct tokens: repeats fill in


def test_the_prompt_depends_on_the_query_and_is_shared_by_its_candidates(tiny_gpt2):
    reranker = QPeftAReranker.create(str(tiny_gpt2))
    q = reranker.scorer.query_ids(["who wrote hamlet", "capital of france"])
    p = reranker.scorer.passage_ids(["hamlet is by shakespeare", "paris is in france"])
    c1, c2 = reranker.query_context("", q[0], p), reranker.query_context("", q[1], p)
    assert c1.shape == (reranker.config.num_clues, D) and not torch.allclose(c1, c2)
    soft = reranker.soft_prompts([c1, c1], [q[0], q[0]], p)
    assert soft.shape == (2, 4 + 8, D) and torch.equal(soft[0], soft[1])


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="context must be candidates or passage"):
        QPeftConfig(context="all")
    with pytest.raises(ValueError, match="num_clues must be >= 1"):
        QPeftConfig(num_clues=0)
