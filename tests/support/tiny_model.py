"""A tiny, deterministic Llama model directory for tests: real code paths, random weights, about 1 s to build.

`build_tiny_llama(path)` writes what `from_pretrained(path)` needs: config.json, model.safetensors,
generation_config.json and a byte-level BPE tokenizer (trained in-process with `tokenizers`) that has a
ChatML chat template. The same seed gives byte-identical files, so tests can compare outputs across runs.
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "VOCAB_SIZE", "build_tiny_llama", "corpus"]

VOCAB_SIZE = 1024
HIDDEN_SIZE = 64
NUM_LAYERS = 2
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, as SmolLM2 and Qwen write it; every turn renders the same whatever follows it (prefix-stable).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "or",
    "which",
    "you",
    "your",
    "we",
    "our",
    "what",
    "who",
    "where",
    "when",
    "how",
    "why",
    "can",
    "will",
    "would",
    "should",
    "could",
    "please",
    "thanks",
    "hello",
    "hi",
    "yes",
    "no",
    "not",
    "color",
    "colour",
    "red",
    "green",
    "blue",
    "yellow",
    "black",
    "white",
    "orange",
    "purple",
    "sky",
    "sea",
    "grass",
    "sun",
    "moon",
    "star",
    "tree",
    "river",
    "cat",
    "dog",
    "bird",
    "fish",
    "horse",
    "cow",
    "fox",
    "owl",
    "bear",
    "wolf",
    "lion",
    "mouse",
    "capital",
    "city",
    "country",
    "france",
    "paris",
    "italy",
    "rome",
    "spain",
    "madrid",
    "germany",
    "berlin",
    "answer",
    "question",
    "assistant",
    "user",
    "system",
    "helpful",
    "model",
    "data",
    "train",
    "test",
    "number",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "zero",
    "plus",
    "minus",
    "equals",
    "times",
    "order",
    "ticket",
    "refund",
    "invoice",
    "account",
    "password",
    "reset",
    "support",
    "billing",
    "shipping",
    "delivery",
    "return",
    "legal",
    "contract",
    "clause",
    "summary",
    "summarize",
    "agreement",
    "party",
    "parties",
    "term",
    "law",
    "court",
    "notice",
]


def corpus(seed: int = 0, sentences: int = 3000) -> list[str]:
    """Deterministic pseudo-English text that the tokenizer is trained on (and that tests may reuse)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        text = " ".join(words).capitalize()
        lines.append(text + rng.choice([".", "?", "!", ":", ","]) + rng.choice(["", " 42", " 7.", " (1)"]))
    return lines


def _train_tokenizer(seed: int):  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    """Write a complete Hugging Face model directory (Llama, 2 layers, hidden 64, vocab 1024) to `path`.

    Deterministic: the same seed gives the same weights and tokenizer. `initializer_range=0.1` makes the
    random model sensitive enough that small adapters visibly move the loss. Returns `path`.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(seed)
    tokenizer.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,  # real models pad the vocabulary too; the tokenizer uses the first ~760 ids
        hidden_size=HIDDEN_SIZE,
        intermediate_size=4 * HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.1,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):  # CPU generator only; the caller's RNG is left as it was
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(path)
    return path
