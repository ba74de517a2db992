"""Naive, cache-free reference decoding for multi-model processors.

Every model re-reads its own full prompt plus everything generated so far, one row at a time and
without padding, so neither KV caches nor left padding nor batching can hide a bug in the
processors under test.
"""

import torch

from decoding.auxiliary import encode_prompts
from decoding.generate import eos_token_ids, pad_token_id


def full_logprobs(model, ids, vocab_size):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1, :vocab_size]
    return torch.log_softmax(logits.float(), dim=-1)


def naive_greedy(tokenizer, models, combine, steps, main="main"):
    """Greedy decoding with ``combine({name: logprobs[V]}) -> scores[V]`` recomputed from scratch.

    ``models``: name -> (model, prompts as accepted by AuxiliaryModel). Returns, per row, the
    generated ids (up to and including <eos>) and the list of per-step score vectors.
    """
    vocab = len(tokenizer)
    encoded = {name: encode_prompts(tokenizer, prompts) for name, (_, prompts) in models.items()}
    rows = len(next(iter(encoded.values())))
    eos = eos_token_ids(models[main][0], tokenizer)
    results = []
    for i in range(rows):
        generated, step_scores = [], []
        for _ in range(steps):
            lps = {name: full_logprobs(models[name][0], encoded[name][i] + generated, vocab) for name in models}
            scores = combine(lps)
            step_scores.append(scores)
            token = int(scores.argmax())
            generated.append(token)
            if token in eos:
                break
        results.append((generated, step_scores))
    return results


def processor_greedy(model, tokenizer, prompts, processor, steps):
    """``model.generate`` with ``processor`` on left-padded ``prompts`` (texts or token-id lists);
    per-row generated ids (through <eos>) and per-step scores."""
    eos = eos_token_ids(model, tokenizer)
    pad = pad_token_id(tokenizer, eos)
    prompts = encode_prompts(tokenizer, prompts)
    width = max(map(len, prompts))
    enc = {
        "input_ids": torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts]),
        "attention_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
    }
    out = model.generate(
        **enc,
        logits_processor=[processor],
        do_sample=False,
        max_new_tokens=steps,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=pad,
    )
    new = out.sequences[:, enc["input_ids"].shape[1] :]
    results = []
    for i in range(new.shape[0]):
        ids = new[i].tolist()
        end = next((t for t, token in enumerate(ids) if token in eos), None)
        if end is not None:
            ids = ids[: end + 1]
        results.append((ids, [out.scores[t][i, : len(tokenizer)] for t in range(len(ids))]))
    return results


def assert_same_decoding(got, expected, atol=1e-4):
    assert len(got) == len(expected)
    for (ids, scores), (ref_ids, ref_scores) in zip(got, expected):
        assert ids == ref_ids
        for s, r in zip(scores, ref_scores):
            torch.testing.assert_close(s, r, atol=atol, rtol=0)


def chat(prompts):
    """One user turn per prompt, in chat-message form."""
    return [[{"role": "user", "content": p}] for p in prompts]
