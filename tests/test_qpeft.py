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
    a = QPeftAReranker.create(str(tiny_gpt2), num_prompt_tokens=4)
    # prompt 4*D, query projection D*D+D, attention in/out projections 4*D*D+4*D
    assert a.num_trainable_parameters() == 4 * D + (D * D + D) + (4 * D * D + 4 * D)
    r = QPeftRReranker.create(str(tiny_gpt2), num_prompt_tokens=4)
    assert r.num_trainable_parameters() == 4 * D + D * D + D
    assert sum(p.numel() for p in a.scorer.lm.parameters() if p.requires_grad) == 0


def test_qpeft_a_attention_is_differentiable_end_to_end(tiny_llama):
    reranker = QPeftAReranker.create(str(tiny_llama))
    scores = reranker.score(["who wrote hamlet"], [["hamlet is by shakespeare", "paris is in france"]])
    (scores[0, 0] - scores[0, 1]).backward()
    for name in ("attention.in_proj_weight", "attention.out_proj.weight", "prompt", "query_proj.weight"):
        grad = dict(reranker.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in reranker.scorer.lm.parameters())


def test_qpeft_a_gives_one_clue_per_query_token_attending_over_the_passage(tiny_gpt2):
    reranker = QPeftAReranker.create(str(tiny_gpt2))
    (q,) = reranker.scorer.query_ids(["who wrote hamlet"])
    (p,) = reranker.scorer.passage_ids(["hamlet is a play by shakespeare"])
    clues = reranker.clues(q, reranker._context_ids([p]))
    assert clues.shape == (len(q), D)
    assert reranker.last_attention.shape == (len(q), len(p))
    assert torch.allclose(reranker.last_attention.sum(-1), torch.ones(len(q)))


def test_qpeft_r_picks_distinct_context_tokens_matching_the_query(tiny_gpt2):
    reranker = QPeftRReranker.create(str(tiny_gpt2), num_clues=3)
    tok = reranker.scorer.tokenizer
    query = tok("hamlet", add_special_tokens=False)["input_ids"]
    context = tok("the play hamlet by hamlet author", add_special_tokens=False)["input_ids"]
    chosen = reranker.select(query, context)
    assert chosen[0] == query[0] and len(set(chosen)) == 3 and set(chosen) <= set(context)
    assert reranker.select(query, query) == query * 3  # too few distinct tokens: repeats fill in


def test_by_default_the_clues_come_from_the_scored_passage(tiny_gpt2):
    reranker = QPeftRReranker.create(str(tiny_gpt2))
    q = reranker.scorer.query_ids(["who wrote hamlet"])[0]
    p = reranker.scorer.passage_ids(["hamlet is by shakespeare", "paris is in france"])
    assert reranker.query_context("", q, p) is None
    soft = reranker.soft_prompts([None, None], [q, q], p)
    assert [s.shape for s in soft] == [(4 + 8, D), (4 + 8, D)] and not torch.allclose(soft[0], soft[1])
    assert torch.equal(soft[0][4:], reranker.clues(q, reranker._context_ids([p[0]])))


def test_with_candidate_context_the_prompt_is_shared_by_a_querys_candidates(tiny_gpt2):
    reranker = QPeftAReranker.create(str(tiny_gpt2), context="candidates")
    q = reranker.scorer.query_ids(["who wrote hamlet", "capital of france"])
    p = reranker.scorer.passage_ids(["hamlet is by shakespeare", "paris is in france"])
    c1, c2 = reranker.query_context("", q[0], p), reranker.query_context("", q[1], p)
    assert c1.shape == (len(q[0]), D) and c2.shape == (len(q[1]), D)
    soft = reranker.soft_prompts([c1, c1], [q[0], q[0]], p)
    assert soft[0].shape == (4 + len(q[0]), D) and torch.equal(soft[0], soft[1])


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="context must be candidates or passage"):
        QPeftConfig(context="all")
    with pytest.raises(ValueError, match="num_clues must be >= 1"):
        QPeftConfig(num_clues=0)
