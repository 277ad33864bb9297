"""Q-PEFT-R and Q-PEFT-A: training through the shared loop on mini_kilt with tiny causal and
seq2seq LMs, exact save/load, gradients end to end, the prompt's layout and start, clue
selection and its filter, parameter counts."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from multitask_retriever.rerank import load_reranker, make_reranker
from multitask_retriever.rerank.qpeft import QPeftAReranker, QPeftConfig, QPeftRReranker
from test_llm_scoring import build_examples, check_training
from tiny_models import VOCAB

D = 32  # hidden size of the tiny LMs


@pytest.fixture(scope="module")
def examples(mini_kilt, tmp_path_factory):
    return build_examples(mini_kilt, tmp_path_factory.mktemp("qpeft"))


def _words(reranker, ids: list[int]) -> list[str]:
    return [reranker.scorer.tokenizer.decode([t]) for t in ids]


def _ids(reranker, text: str) -> list[int]:
    return reranker.scorer.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("method", ["qpeft-a", "qpeft-r"])
@pytest.mark.parametrize("lm", ["tiny_gpt2", "tiny_t5_lm"])
def test_training_lowers_the_loss_keeps_the_lm_and_round_trips(method, lm, examples, request, tmp_path):
    torch.manual_seed(0)
    reranker = make_reranker(method, str(request.getfixturevalue(lm)), max_passage_tokens=32, dropout=0.0)
    result = check_training(reranker, examples, tmp_path, load_reranker, lr=2e-2)
    # the embedding copy is saved as exactly the rows training moved
    saved = load_file(f"{result.model_path}/module.safetensors")
    moved = reranker.embedding_delta.detach().cpu().any(dim=1).nonzero().flatten()
    assert 0 < len(moved) < VOCAB and torch.equal(saved["embedding_delta.rows"], moved)


def test_trainable_parameter_counts(tiny_gpt2):
    copy, mlp = VOCAB * D, 2 * (D * D + D)  # the embedding copy; Linear-ReLU-Linear
    a = QPeftAReranker.create(str(tiny_gpt2), num_prompt_tokens=4)
    assert a.num_trainable_parameters() == 4 * D + copy + mlp + (4 * D * D + 4 * D)  # + attention
    r = QPeftRReranker.create(str(tiny_gpt2), num_prompt_tokens=4)
    assert r.num_trainable_parameters() == 4 * D + copy + mlp
    assert sum(p.numel() for p in a.scorer.lm.parameters() if p.requires_grad) == 0


def test_the_soft_prompt_starts_as_the_instruction_tokens_embeddings(tiny_gpt2):
    reranker = QPeftAReranker.create(str(tiny_gpt2), num_prompt_tokens=20)
    ids = _ids(reranker, reranker.config.instruction.strip())
    assert len(ids) < 20
    cycled = [ids[i % len(ids)] for i in range(20)]
    table = reranker.scorer.lm.get_input_embeddings().weight
    assert torch.equal(reranker.prompt.detach(), table[cycled].detach())
    short = QPeftAReranker.create(str(tiny_gpt2), num_prompt_tokens=2, prompt_init="given the hints, please")
    assert torch.equal(short.prompt.detach(), table[_ids(short, "given the")].detach())


def test_the_soft_prompt_follows_bos_and_the_clue_block_precedes_the_instruction(tiny_llama):
    reranker = QPeftRReranker.create(str(tiny_llama), num_prompt_tokens=3, num_clues=2)
    scorer = reranker.scorer
    (q,), (p,) = scorer.query_ids(["who wrote hamlet"]), scorer.passage_ids(["hamlet is by shakespeare"])
    (soft,) = reranker.soft_prompts([None], [q], [p])
    block = len(_ids(reranker, "\nhints:")) + 2 + len(_ids(reranker, "\n"))
    assert soft.shape == (3 + block, D)
    pair = scorer.build(q, p, len(soft))
    text = scorer._prefix + p
    assert pair.context[: len(scorer._bos)] == scorer._bos  # the tiny tokenizer has none; SmolLM2 neither
    assert pair.soft_mask == ([False] * len(scorer._bos) + [True] * 3 + [False] * len(text) + [True] * block
                              + [False] * len(scorer.instruction_ids(None)))
    assert pair.context[len(scorer._bos) + 3: len(scorer._bos) + 3 + len(text)] == text


def test_an_untrained_clue_block_is_the_hints_text_around_the_clue_tokens(tiny_gpt2):
    reranker = QPeftRReranker.create(str(tiny_gpt2), num_clues=3)
    q, p = _ids(reranker, "who wrote hamlet"), _ids(reranker, "hamlet is a play by shakespeare")
    (block,) = reranker.clue_blocks([q], [p])
    expected = _ids(reranker, "\nhints:") + reranker.select(q, p) + _ids(reranker, "\n")
    assert torch.equal(block, reranker.scorer.lm.get_input_embeddings().weight[expected].detach())


def test_qpeft_a_gradients_reach_the_attention_the_mlp_and_the_query_rows_of_the_copy(tiny_llama):
    reranker = QPeftAReranker.create(str(tiny_llama), mlp="plain")
    scores = reranker.score(["who wrote hamlet"], [["hamlet is by shakespeare", "paris is in france"]])
    (scores[0, 0] - scores[0, 1]).backward()
    params = dict(reranker.named_parameters())
    for name in ("attention.in_proj_weight", "attention.out_proj.weight", "prompt", "mlp.0.weight",
                 "mlp.2.weight", "embedding_delta"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    rows = params["embedding_delta"].grad.any(dim=1).nonzero().flatten().tolist()
    assert rows == sorted(set(reranker.scorer.query_ids(["who wrote hamlet"])[0] + reranker._clue_prefix
                              + reranker._clue_suffix))
    assert all(p.grad is None for p in reranker.scorer.lm.parameters())


def test_qpeft_r_gradients_reach_the_rows_of_the_selected_clues(tiny_gpt2):
    reranker = QPeftRReranker.create(str(tiny_gpt2), num_clues=2)
    q = reranker.scorer.query_ids(["who wrote hamlet"])[0]
    p = reranker.scorer.passage_ids(["hamlet is by shakespeare", "paris is in france"])
    reranker.score(["who wrote hamlet"], [["hamlet is by shakespeare", "paris is in france"]]).sum().backward()
    rows = reranker.embedding_delta.grad.any(dim=1).nonzero().flatten().tolist()
    assert rows == sorted(set(reranker.select(q, p[0]) + reranker.select(q, p[1]) + reranker._clue_prefix
                              + reranker._clue_suffix))
    assert reranker.mlp[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in reranker.scorer.lm.parameters())


def test_qpeft_a_gives_one_clue_per_query_token_attending_over_the_passage(tiny_gpt2):
    reranker = QPeftAReranker.create(str(tiny_gpt2))
    reranker.eval()  # no attention dropout
    (q,) = reranker.scorer.query_ids(["who wrote hamlet"])
    (p,) = reranker.scorer.passage_ids(["hamlet is a play by shakespeare"])
    (block,) = reranker.clue_blocks([q], [p])
    assert block.shape == (len(reranker._clue_prefix) + len(q) + len(reranker._clue_suffix), D)
    assert reranker.last_attention.shape == (len(q), len(p))
    assert torch.allclose(reranker.last_attention.sum(-1), torch.ones(len(q)))


def test_qpeft_r_never_picks_a_query_word_a_stop_word_or_a_symbol_while_others_exist(tiny_gpt2):
    reranker = QPeftRReranker.create(str(tiny_gpt2), num_clues=8)
    q = _ids(reranker, "who wrote the play hamlet")
    context = _ids(reranker, "the play hamlet, which was written by shakespeare in 1600, is a tragedy.")
    chosen = reranker.select(q, context)
    assert len(chosen) == 8 and set(_words(reranker, chosen)) == {"written", "shakespeare", "1600", "tragedy"}


def test_qpeft_r_skips_the_pieces_of_a_query_word(tiny_gpt2):
    reranker = QPeftRReranker.create(str(tiny_gpt2), num_clues=2)
    assert _words(reranker, _ids(reranker, "elsinore castle")) == ["el", "##sin", "##ore", "castle"]
    chosen = reranker.select(_ids(reranker, "elsinore"), _ids(reranker, "elsinore castle"))
    assert chosen == _ids(reranker, "castle") * 2


def test_qpeft_r_without_a_filter_picks_distinct_tokens_most_like_the_query(tiny_gpt2):
    reranker = QPeftRReranker.create(str(tiny_gpt2), num_clues=3, clue_filter=[])
    query = _ids(reranker, "hamlet")
    context = _ids(reranker, "the play hamlet by hamlet author")
    chosen = reranker.select(query, context)
    assert chosen[0] == query[0] and len(set(chosen)) == 3 and set(chosen) <= set(context)
    assert reranker.select(query, query) == query * 3  # too few distinct tokens: repeats fill in


def test_qpeft_r_falls_back_to_unfiltered_tokens_when_the_filter_leaves_none(tiny_gpt2):
    reranker = QPeftRReranker.create(str(tiny_gpt2), num_clues=2)
    query, context = _ids(reranker, "hamlet"), _ids(reranker, "the hamlet")
    assert sorted(reranker.select(query, context)) == sorted(context)


def test_by_default_the_clues_come_from_the_scored_passage(tiny_gpt2):
    reranker = QPeftRReranker.create(str(tiny_gpt2))
    q = reranker.scorer.query_ids(["who wrote hamlet"])[0]
    p = reranker.scorer.passage_ids(["hamlet is by shakespeare", "paris is in france"])
    assert reranker.query_context("", q, p) is None
    soft = reranker.soft_prompts([None, None], [q, q], p)
    n = 4 + len(reranker._clue_prefix) + 8 + len(reranker._clue_suffix)
    assert [s.shape for s in soft] == [(n, D), (n, D)] and not torch.allclose(soft[0], soft[1])
    assert torch.equal(soft[0][4:], reranker.clue_blocks([q], [reranker._context_ids([p[0]])])[0])


def test_with_candidate_context_the_prompt_is_shared_by_a_querys_candidates(tiny_gpt2):
    reranker = QPeftAReranker.create(str(tiny_gpt2), context="candidates")
    reranker.eval()
    wrap = len(reranker._clue_prefix) + len(reranker._clue_suffix)
    q = reranker.scorer.query_ids(["who wrote hamlet", "capital of france"])
    p = reranker.scorer.passage_ids(["hamlet is by shakespeare", "paris is in france"])
    c1, c2 = reranker.query_context("", q[0], p), reranker.query_context("", q[1], p)
    assert c1.shape == (wrap + len(q[0]), D) and c2.shape == (wrap + len(q[1]), D)
    soft = reranker.soft_prompts([c1, c1], [q[0], q[0]], p)
    assert soft[0].shape == (4 + wrap + len(q[0]), D) and torch.equal(soft[0], soft[1])


def test_a_checkpoint_of_the_earlier_module_is_one_clear_error(tiny_gpt2, tmp_path):
    earlier = {"prompt": torch.zeros(4, D), "query_proj.weight": torch.zeros(D, D)}  # before the embedding copy
    save_file(earlier, str(tmp_path / "module.safetensors"))
    (tmp_path / "mtr_reranker.json").write_text(json.dumps({"method": "qpeft-a", "config": {"llm": str(tiny_gpt2)}}))
    with pytest.raises(ValueError, match=f"^{tmp_path}: saved parameters .* do not match the qpeft-a module"):
        load_reranker(tmp_path)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="context must be candidates or passage"):
        QPeftConfig(context="all")
    with pytest.raises(ValueError, match="num_clues must be >= 1"):
        QPeftConfig(num_clues=0)
    with pytest.raises(ValueError, match=r"unknown clue_filter entries \['digits'\]"):
        QPeftConfig(clue_filter=["query", "digits"])
    with pytest.raises(ValueError, match="mlp must be one of"):
        QPeftConfig(mlp="deep")
