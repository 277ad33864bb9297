"""multitask-retriever: one dense retriever for many KILT tasks, FAISS indexing, LLM reranking.

The public names below are imported on first use, so `import multitask_retriever` loads no
model library (torch, transformers, FAISS):

    from multitask_retriever import DualEncoder, Index, Retriever, Pipeline, train
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_LAZY = {
    "DualEncoder": "encoder",
    "EncoderConfig": "encoder",
    "Index": "indexing",
    "IndexConfig": "indexing",
    "Retriever": "retriever",
    "load_retriever": "retriever",
    "Pipeline": "pipeline",
    "Reranker": "rerank.base",
    "load_reranker": "rerank",
    "make_reranker": "rerank",
    "TrainConfig": "trainer",
    "TrainModelConfig": "trainer",
    "TrainDataConfig": "trainer",
    "OptimizerConfig": "training_loop",
    "TrainResult": "trainer",
    "train": "training",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from .encoder import DualEncoder, EncoderConfig
    from .indexing import Index, IndexConfig
    from .pipeline import Pipeline
    from .rerank import load_reranker, make_reranker
    from .rerank.base import Reranker
    from .retriever import Retriever, load_retriever
    from .trainer import TrainConfig, TrainDataConfig, TrainModelConfig, TrainResult
    from .training import train
    from .training_loop import OptimizerConfig


def __getattr__(name: str) -> Any:
    """Import the submodule behind a public name the first time it is asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
