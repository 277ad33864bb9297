"""multitask-retriever: one dense retriever for many KILT tasks, FAISS indexing, LLM reranking."""

__version__ = "0.1.0"
