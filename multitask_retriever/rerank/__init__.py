"""Rerankers behind one interface (`Reranker`): LLM-based (Q-PEFT, ID-SPAM, PEFT baselines) and cross-encoders."""
