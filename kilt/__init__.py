"""The KILT benchmark: task files, knowledge source, passages, official retrieval metrics, BM25.

This package knows nothing of neural models; `multitask_retriever` builds on it.
"""
