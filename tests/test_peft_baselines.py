"""Static prompt tuning and LoRA through `peft`, on the same frozen LM and score as Q-PEFT."""
from __future__ import annotations

import pytest
import torch

from multitask_retriever.rerank import load_reranker, make_reranker
from multitask_retriever.rerank.peft_baselines import LoraReranker, PromptTuningReranker, ZeroShotReranker
from test_llm_scoring import PASSAGES, QUERY, build_examples, check_training

D = 32


@pytest.fixture(scope="module")
def examples(mini_kilt, tmp_path_factory):
    return build_examples(mini_kilt, tmp_path_factory.mktemp("peft"))


@pytest.mark.parametrize("method, lr", [("prompt-tuning", 3e-2), ("lora", 1e-2)])
@pytest.mark.parametrize("lm", ["tiny_gpt2", "tiny_t5_lm"])
def test_training_lowers_the_loss_keeps_the_lm_and_round_trips(method, lr, lm, examples, request, tmp_path):
    torch.manual_seed(0)
    reranker = make_reranker(method, str(request.getfixturevalue(lm)), max_passage_tokens=32)
    check_training(reranker, examples, tmp_path, load_reranker, lr=lr)


def test_trainable_parameter_counts(tiny_gpt2):
    assert PromptTuningReranker.create(str(tiny_gpt2), num_virtual_tokens=8).num_trainable_parameters() == 8 * D
    # GPT-2's c_attn (D -> 3D) in 2 layers: A [r, D] + B [3D, r]
    assert LoraReranker.create(str(tiny_gpt2), r=4).num_trainable_parameters() == 2 * (4 * D + 3 * D * 4)
    assert ZeroShotReranker.create(str(tiny_gpt2)).num_trainable_parameters() == 0


def test_untrained_lora_scores_exactly_as_zero_shot(tiny_llama):
    lora = LoraReranker.create(str(tiny_llama)).rerank(QUERY, PASSAGES)
    assert lora == ZeroShotReranker.create(str(tiny_llama)).rerank(QUERY, PASSAGES)
