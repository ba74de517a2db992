"""Character-level tokenizer of the offline testbed.

One id per character keeps arithmetic digit-aligned (no BPE merges hide carries) and makes every
string round-trip exactly. ``tok(text)`` prepends ``<bos>`` like Llama tokenizers do, so plain
prompts in the pretraining format (``"37+485="``) look the same to ``transformers``, TRL and vLLM.
The chat template marks assistant turns with ``{% generation %}`` so
``return_assistant_tokens_mask=True`` (and TRL's ``assistant_only_loss``) work.
"""

from __future__ import annotations

import string

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


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the testbed tokenizer (about 90 ids: specials, role tokens, printable ASCII).

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
