"""Build a tiny but real chat model offline: Qwen2 architecture, random weights, a trained BPE tokenizer.

It loads with ``transformers`` and serves with ``transformers serve`` and vLLM (CPU) like any hub
model, in about a megabyte, with no network. The demo and the tests deploy it where a real model would need a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "llmdock deploys open weight language models on your own GPU servers.",
    "Hello! How can I help you today? I am a tiny model with random weights.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "system user assistant: you are a helpful assistant.",
]


def build_tiny_model(dest: Path, *, seed: int = 0) -> Path:
    """Write a tiny Qwen2 chat model into ``dest`` (created; must be empty or absent); return ``dest``.

    Writing goes to ``dest.partial`` first and is renamed at the end, so a half-built model never
    looks complete.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    staging = dest.with_name(dest.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer: Any = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(staging)

    torch.manual_seed(seed)
    config_kwargs: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        # Head size 64: vLLM's CPU attention refuses smaller heads (``head_dim=16`` is unsupported).
        hidden_size=128,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None,
        dtype="float32",
    )
    model = Qwen2ForCausalLM(Qwen2Config(**config_kwargs))
    # Tokens that print nothing readable (special tokens, whitespace, stray UTF-8 bytes) get a zero
    # embedding, so with tied weights their logit is 0 and greedy decoding prefers printable words.
    with torch.no_grad():
        for token_id in range(len(tokenizer)):
            text = tokenizer.decode([token_id])
            if not text.strip() or "\ufffd" in text or text in SPECIALS:
                model.model.embed_tokens.weight[token_id] = 0.0
    model.generation_config.max_new_tokens = 16
    model.generation_config.do_sample = False
    model.generation_config.repetition_penalty = 1.5  # random weights otherwise repeat one token
    model.save_pretrained(staging, safe_serialization=True)
    (staging / "llmdock-tiny.json").write_text(
        json.dumps({"built_by": "llmdock.demo.tinymodel", "seed": seed})
    )
    staging.rename(dest)
    return dest


def ensure_tiny_model(dest: Path) -> Path:
    """Return ``dest`` holding the tiny model, building it when absent (a leftover ``.partial`` is redone)."""
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    if partial.exists():
        import shutil

        shutil.rmtree(partial)
    return build_tiny_model(dest)
