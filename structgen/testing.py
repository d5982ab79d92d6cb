"""Test helpers for users of structgen: a tiny random-weight model with a real tokenizer.

A constraint must hold whatever the weights, so a 2-layer Llama with random weights and the real
tokenizer of the model you deploy is the cheapest honest test double: it loads in milliseconds and
writes adversarial text (long random strings, deep lists) that exercises every budget path.
"""

from __future__ import annotations

from structgen.backends.transformers import Model


def tiny_random_model(tokenizer, *, seed: int = 0, context_length: int = 2048) -> Model:
    """A ``structgen.Model`` of random weights over ``tokenizer`` (a tokenizer or a directory)."""
    import torch
    import transformers

    if isinstance(tokenizer, str):
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=context_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = transformers.LlamaForCausalLM(config)
    hf_model.eval()
    return Model(name=f"tiny-random-{seed}", hf_model=hf_model, tokenizer=tokenizer,
                 context_length=context_length)
