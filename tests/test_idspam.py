"""ID-SPAM: input-dependent soft prompts entering one chosen layer of a frozen LM; training
through the shared loop on mini_kilt with tiny causal and seq2seq LMs."""
from __future__ import annotations

import pytest
import torch

from multitask_retriever.rerank import load_reranker, make_reranker
from multitask_retriever.rerank.idspam import IDSpamReranker
from multitask_retriever.rerank.llm_scoring import transformer_layers
from test_llm_scoring import build_examples, check_training

D = 32


@pytest.fixture(scope="module")
def examples(mini_kilt, tmp_path_factory):
    return build_examples(mini_kilt, tmp_path_factory.mktemp("idspam"))


@pytest.mark.parametrize("lm, layer", [("tiny_gpt2", 1), ("tiny_t5_lm", 0)])
def test_training_lowers_the_loss_keeps_the_lm_and_round_trips(lm, layer, examples, request, tmp_path):
    torch.manual_seed(0)
    reranker = make_reranker("idspam", str(request.getfixturevalue(lm)), layer=layer, max_passage_tokens=32,
                             dropout=0.0)
    check_training(reranker, examples, tmp_path, load_reranker, lr=1e-2)


def test_trainable_parameter_count(tiny_gpt2):
    reranker = IDSpamReranker.create(str(tiny_gpt2), num_prompt_tokens=8, bottleneck=16)
    attention = 4 * D * D + 4 * D
    mlp = (D * 16 + 16) + (16 * 8 * D + 8 * D)
    assert reranker.num_trainable_parameters() == attention + mlp


@pytest.mark.parametrize("layer", [0, 1])
def test_the_prompt_replaces_the_slots_at_the_chosen_layer_only(tiny_llama, layer):
    reranker = IDSpamReranker.create(str(tiny_llama), layer=layer, num_prompt_tokens=3)
    reranker.eval()
    seen = {}

    def capture(index):
        def hook(module, args, kwargs):
            seen[index] = (kwargs.get("hidden_states", args[0] if args else None)).detach().clone()
        return hook

    for i, block in enumerate(transformer_layers(reranker.scorer.lm)):
        block.register_forward_pre_hook(capture(i), with_kwargs=True)  # runs after the prompt hook
    q = reranker.scorer.query_ids(["who wrote hamlet"])
    p = reranker.scorer.passage_ids(["hamlet is by shakespeare"])
    with torch.no_grad():
        prompt = reranker.soft_prompts([None], q, p)
        reranker.scorer.score_pairs(q, p, prompt)
    assert torch.equal(seen[layer][0, :3], prompt[0])
    if layer > 0:  # earlier layers see the placeholders, not the prompt
        pad = reranker.scorer.lm.get_input_embeddings().weight[reranker.scorer._pad]
        assert torch.equal(seen[0][0, 0], pad)


def _prompts_for_two_queries(reranker):
    """The prompts of one passage under two different queries."""
    reranker.eval()
    q = reranker.scorer.query_ids(["who wrote hamlet", "capital of france"])
    p = reranker.scorer.passage_ids(["hamlet is by shakespeare"] * 2)
    return reranker.soft_prompts([None, None], q, p)


def test_by_default_the_prompt_changes_with_the_query(tiny_gpt2):
    soft = _prompts_for_two_queries(IDSpamReranker.create(str(tiny_gpt2)))
    assert soft.shape == (2, 8, D) and not torch.allclose(soft[0], soft[1])


def test_reading_the_passage_alone_the_prompt_ignores_the_query(tiny_gpt2):
    soft = _prompts_for_two_queries(IDSpamReranker.create(str(tiny_gpt2), input="passage"))
    assert torch.equal(soft[0], soft[1])


def test_a_layer_outside_the_lm_is_refused(tiny_gpt2):
    with pytest.raises(ValueError, match="soft_layer 5 is outside the LM's 2 layers"):
        IDSpamReranker.create(str(tiny_gpt2), layer=5)
