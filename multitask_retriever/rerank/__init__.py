"""Rerankers behind one interface (`Reranker`): LLM-based (Q-PEFT, ID-SPAM, PEFT baselines) and cross-encoders.

`make_reranker(method, model, **options)` builds a fresh one by name and
`load_reranker(path)` reloads a saved one by the method in its mtr_reranker.json.
Modules are imported only when a method is asked for.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

METHODS: dict[str, tuple[str, str]] = {
    "qpeft-a": ("qpeft", "QPeftAReranker"),
    "qpeft-r": ("qpeft", "QPeftRReranker"),
    "idspam": ("idspam", "IDSpamReranker"),
    "prompt-tuning": ("peft_baselines", "PromptTuningReranker"),
    "lora": ("peft_baselines", "LoraReranker"),
    "zero-shot": ("peft_baselines", "ZeroShotReranker"),
    "cross-encoder": ("cross_encoder", "CrossEncoderReranker"),
}


def reranker_class(method: str) -> type:
    """The class registered as `method`; an unknown name is a ValueError listing the known ones."""
    if method not in METHODS:
        raise ValueError(f"unknown reranker method {method!r}; known: {', '.join(METHODS)}")
    module, name = METHODS[method]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def make_reranker(method: str, model: str | Path = "", **options: Any):
    """A fresh reranker over the start model `model`: the LM of an LLM method or the
    cross-encoder's encoder (empty: the packaged default); `options` are its config fields."""
    return reranker_class(method).create(str(model), **options)


def load_reranker(path: str | Path, **overrides: Any):
    """Reload a reranker saved with `save_pretrained`, whatever its method."""
    from .base import read_reranker_meta

    return reranker_class(read_reranker_meta(path)["method"]).from_pretrained(path, **overrides)


__all__ = ["METHODS", "load_reranker", "make_reranker", "reranker_class"]
