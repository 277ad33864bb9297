"""Baselines on the same frozen LM and the same query-likelihood score: zero-shot (UPR;
Sachan et al. 2022, no training), static prompt tuning (Lester et al. 2021) and LoRA
(Hu et al. 2022), the last two built by the `peft` library."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .llm_scoring import LLMReranker, LLMScoringConfig


class ZeroShotReranker(LLMReranker):
    """Query likelihood given the passage and the instruction, nothing trained."""

    method = "zero-shot"


@dataclass
class PromptTuningConfig(LLMScoringConfig):
    num_virtual_tokens: int = field(default=8, metadata={"help": "learned soft tokens before the prompt", "min": 1})


class PromptTuningReranker(LLMReranker):
    """Static soft prompt (the same for every input) from `peft`'s prompt-tuning encoder."""

    method = "prompt-tuning"
    config_class = PromptTuningConfig
    soft_position = "start"

    def __init__(self, lm: nn.Module, tokenizer: Any, config: PromptTuningConfig):
        import peft

        super().__init__(lm, tokenizer, config)
        task = peft.TaskType.SEQ_2_SEQ_LM if lm.config.is_encoder_decoder else peft.TaskType.CAUSAL_LM
        peft_config = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=config.num_virtual_tokens,
                                              token_dim=self.scorer.hidden_size, num_transformer_submodules=1)
        wrapped = peft.get_peft_model(lm, peft_config)
        self.prompt_encoder = wrapped.prompt_encoder
        self._peft = [wrapped]  # kept unregistered: the LM is already `scorer.lm`
        embed = lm.get_input_embeddings().weight.detach()
        with torch.no_grad():  # init from random vocabulary embeddings (Lester et al. 2021)
            table = self.prompt_encoder["default"].embedding.weight
            table.copy_(embed[torch.randint(0, embed.shape[0], (table.shape[0],))].to(table.dtype))

    def soft_prompts(self, contexts: list[Any], query_ids: list[list[int]],
                     passage_ids: list[list[int]]) -> torch.Tensor:
        return self._peft[0].get_prompt(batch_size=len(query_ids))


@dataclass
class LoraConfig(LLMScoringConfig):
    r: int = field(default=8, metadata={"help": "LoRA rank", "min": 1})
    alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)", "min": 1})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch", "min": 0, "below": 1})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "module names to adapt; default: peft's choice for the architecture (attention q/v)"})


class LoraReranker(LLMReranker):
    """Low-rank updates to the LM's attention projections; the base weights stay frozen."""

    method = "lora"
    config_class = LoraConfig

    def __init__(self, lm: nn.Module, tokenizer: Any, config: LoraConfig):
        import peft

        super().__init__(lm, tokenizer, config)
        task = peft.TaskType.SEQ_2_SEQ_LM if lm.config.is_encoder_decoder else peft.TaskType.CAUSAL_LM
        peft_config = peft.LoraConfig(task_type=task, r=config.r, lora_alpha=config.alpha,
                                      lora_dropout=config.dropout, target_modules=config.target_modules)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fan_in_fan_out notices for GPT-2's Conv1D
            self._peft = [peft.get_peft_model(lm, peft_config)]  # adapts `lm` in place
        self.scorer.lm.eval()
