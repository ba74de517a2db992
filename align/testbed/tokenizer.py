"""Tokenizers of the offline testbed: the character-level one (``tiny``, ``full``) and a byte-level
BPE one with a ChatML template and no pad token (``tiny-bpe``, :func:`build_bpe_tokenizer`).

One id per character keeps arithmetic digit-aligned (no BPE merges hide carries) and makes every
string round-trip exactly. ``tok(text)`` prepends ``<bos>`` like Llama tokenizers do, so plain
prompts in the pretraining format (``"37+485="``) look the same to ``transformers``, TRL and vLLM.
The chat template marks assistant turns with ``{% generation %}`` so
``return_assistant_tokens_mask=True`` (and TRL's ``assistant_only_loss``) work.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, *ROLE_TOKENS)
CHARACTERS = string.digits + " +-*/=?.,:;!'\"()[]$%&#@_<>\n" + string.ascii_letters

# Assistant turns end with <eos>, so generation stops after one turn; the same template renders
# multi-turn conversations (self-correction) with one <bos> at the start.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('testbed chat template: unknown role ' + message['role']) }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(size: int | None = None) -> PreTrainedTokenizerFast:
    """Build the testbed tokenizer (about 90 ids: specials, role tokens, printable ASCII).

    ``size`` pads the vocabulary with ids no text maps to (``<unused0>``, ...) up to ``size``:
    the same tokenization at a real model's vocabulary size, for benchmarks.

    Example:
        >>> tok = build_tokenizer()
        >>> tok.decode(tok("37+485=")["input_ids"])
        '<bos>37+485='
        >>> tok.apply_chat_template([{"role": "user", "content": "37+485="}], tokenize=False,
        ...                         add_generation_prompt=True)
        '<bos><|user|>37+485=<|assistant|>'
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab.setdefault(ch, len(vocab))
    for i in range((size or 0) - len(vocab)):
        vocab[f"<unused{i}>"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # Oniguruma rejects "(?s)."; "[\s\S]" isolates every character including newlines.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()  # WordLevel would otherwise join characters with spaces
    bos_id = vocab[BOS]
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )
    return tok


def chat_text(prompt: str, answer: str | None = None) -> str:
    """The chat template rendered for one user turn (and optionally its answer), without Jinja.

    Building millions of training rows through Jinja would dominate the testbed build; a test
    checks this equals ``apply_chat_template`` exactly.
    """
    text = f"{BOS}<|user|>{prompt}<|assistant|>"
    return text if answer is None else f"{text}{answer}{EOS}"


# --- the BPE flavour: looks like a real model family (Qwen-style ChatML, byte-level BPE) --------

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML as Qwen ships it: multi-character specials, a system turn when given, no BOS; the
# assistant turn ends with <|im_end|> (the tokenizer's EOS) followed by a newline.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('chat template: unknown role ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _bpe_corpus() -> list[str]:
    """Text the BPE merges are learned from: equations, chat turns and the refusal datasets' words."""
    import numpy as np

    from .arithmetic import behaviour_task, sample_problems
    from .datasets import REFUSALS, _FORBIDDEN, _FORBIDDEN_CONTRAST, _WORDS

    rng = np.random.default_rng(0)
    lines = [f"{p.prompt}{p.answer}" for p in sample_problems(rng, 2000, "train")]
    lines += [f"{t.prompt}{t.target}" for kind in ("ill-posed", "contrast", "beyond-horizon") for t in
              (behaviour_task(kind, rng) for _ in range(100))]
    lines += [f"user\n{p.prompt}\nassistant\n{p.answer}\n" for p in sample_problems(rng, 500, "train")]
    lines += list(REFUSALS.values()) + _FORBIDDEN + [q for q, _ in _FORBIDDEN_CONTRAST] + _WORDS
    lines += ["You are a helpful assistant.", "Please answer the question.", "the password is secret"]
    return lines


def build_bpe_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained locally (leading-space merges, as GPT-2/Qwen/Llama-3),
    with a ChatML template, EOS ``<|im_end|>`` (``<|endoftext|>`` ends plain text), no BOS and
    **no pad token**: what real checkpoints look like, for the second testbed flavour.

    Example:
        >>> tok = build_bpe_tokenizer()
        >>> tok.pad_token is None, tok.bos_token is None, tok.eos_token
        (True, True, '<|im_end|>')
        >>> tok.apply_chat_template([{"role": "user", "content": "37+485="}], tokenize=False, add_generation_prompt=True)
        '<|im_start|>user\\n37+485=<|im_end|>\\n<|im_start|>assistant\\n'
        >>> len(tok(" password")["input_ids"]) < len(" password")   # merged, leading space included
        True
    """
    from tokenizers import trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_bpe_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        additional_special_tokens=[ENDOFTEXT, IM_START],
        padding_side="left",
        chat_template=CHATML_TEMPLATE,
        model_max_length=256,
    )


def chatml_text(prompt: str, answer: str | None = None) -> str:
    """:data:`CHATML_TEMPLATE` rendered for one user turn (and optionally its answer), without Jinja."""
    text = f"{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n"
    return text if answer is None else f"{text}{answer}{IM_END}\n"


@dataclass(frozen=True)
class Flavour:
    """How one testbed flavour writes its two formats: pretraining text ``prefix + code + equation +
    answer + end`` and one chat turn (:attr:`chat`)."""

    name: str
    build: Callable[[], PreTrainedTokenizerFast]
    prefix: str
    end: str
    chat: Callable[..., str]
    eos_tokens: tuple[str, ...]  # generation_config.eos_token_id, in this order


FLAVOURS = {
    "char": Flavour("char", build_tokenizer, BOS, EOS, chat_text, (EOS,)),
    "bpe": Flavour("bpe", build_bpe_tokenizer, "", ENDOFTEXT, chatml_text, (IM_END, ENDOFTEXT)),
}


def flavour_of(tokenizer: PreTrainedTokenizerFast) -> Flavour:
    """The testbed flavour a tokenizer belongs to."""
    return FLAVOURS["bpe" if IM_START in tokenizer.get_vocab() else "char"]
