"""Build a tiny but real chat model offline: Qwen2 architecture, random weights, a trained BPE tokenizer.

It loads with ``transformers`` and serves with ``transformers serve`` and vLLM (CPU) like any hub
model, in about a megabyte, with no network. The demo and the tests deploy it where a real model would need a GPU.

Building needs torch, tokenizers and transformers. ``llmdock demo`` has them in its engine
environment, not in llmdock's own Python, so it runs this file there as a script (it imports
nothing of llmdock's)::

    ENV/bin/python -I src/llmdock/demo/tinymodel.py DEST      # what ensure_tiny_model(dest, python=…) runs
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    # Tokens that print nothing readable (special tokens, whitespace, control bytes, stray UTF-8) get a zero
    # embedding, so with tied weights their logit is 0 and greedy decoding prefers printable words.
    with torch.no_grad():
        for token_id in range(len(tokenizer)):
            text = tokenizer.decode([token_id])
            if not text.strip() or not text.isprintable() or "\ufffd" in text or text in SPECIALS:
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


def ensure_tiny_model(dest: Path, python: str | None = None) -> Path:
    """Return ``dest`` holding the tiny model, building it when absent (a leftover ``.partial`` is redone).

    ``python``: build it with that interpreter (an engine environment's, which has torch) instead
    of in this process, which then needs ``llmdock[demo]``.
    """
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    if partial.exists():
        import shutil

        shutil.rmtree(partial)
    if python is None:
        _check_in_process()
        return build_tiny_model(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [python, "-I", str(Path(__file__).resolve()), str(dest)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"},
    )
    if done.returncode != 0 or not (dest / "config.json").is_file():
        from llmdock.errors import LlmdockError

        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise LlmdockError(
            f"building the tiny model with {python} failed (exit {done.returncode}):\n{tail}",
            "the engine environment may be broken: remove it (`llmdock env rm llmdock-demo`) and run again",
        )
    return dest


def _check_in_process() -> None:
    import importlib.util

    missing = [m for m in ("torch", "tokenizers", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        from llmdock.errors import LlmdockError

        raise LlmdockError(
            f"building the tiny model in this Python needs {', '.join(missing)}",
            "install them with `pip install 'llmdock[demo]'`, or build it in an engine environment "
            "(ensure_tiny_model(dest, python=ENV/bin/python), as `llmdock demo` does)",
        )


if __name__ == "__main__":  # run by ensure_tiny_model(dest, python=...) in an engine environment
    if len(sys.argv) != 2:
        sys.exit("usage: python tinymodel.py DEST")
    build_tiny_model(Path(sys.argv[1]))
