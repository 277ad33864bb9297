"""The tiny model folders load back with `from_pretrained`, as a user's folders would."""
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer


def test_tiny_folders_load(tiny_t5, tiny_bert, tiny_gpt2, tiny_t5_lm, tiny_llama):
    assert AutoModel.from_pretrained(tiny_t5).config.model_type == "t5"
    assert AutoModel.from_pretrained(tiny_bert).config.model_type == "bert"
    assert AutoModelForCausalLM.from_pretrained(tiny_gpt2).config.model_type == "gpt2"
    assert AutoModelForCausalLM.from_pretrained(tiny_llama).config.model_type == "llama"
    assert AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_lm).config.model_type == "t5"
    assert AutoTokenizer.from_pretrained(tiny_bert)("hello world")["input_ids"][0] == 101
