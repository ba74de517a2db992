"""Refusal-token SFT rows from CoCoNot (``align data coconot``), with a fixed split by prompt.

CoCoNot (Brahman et al., "The Art of Saying No", arXiv:2407.12043) ships 1,001 prompts a model
should not comply with, in 5 categories and their subcategories, and 379 contrast prompts that
look like them but must be answered; ``data/eval/coconot`` holds them unchanged. Refusal-token
SFT (Jain et al., arXiv:2412.06748) needs responses:

* a non-compliance prompt gets a short refusal written for its subcategory as CoCoNot's rubric
  (``refusal_evaluation_rubric.json``) describes a refusal there: a safety decline, a corrected
  false premise, a request for clarification, a stated modality or knowledge limit, an AI's
  disclaimer of feelings; one of three phrasings, picked by the prompt's id;
* a contrast prompt gets the answer the model itself gives (greedy, ``ANSWER_TOKENS`` new tokens,
  cut after its last full sentence), so ``[respond]`` rows teach the token and not new text.
  Contrast prompts the model itself refuses (by :func:`align.eval.scorers.refusal_string_match`)
  are kept out of the training split: their text would contradict the label.

The split is by prompt id (``sha256``): 60% train, 20% dev, 20% test, the same on every machine;
selection reads dev only, and the reports read test. Rows: ``id``, ``messages`` (user prompt,
assistant response), ``label`` (``refuse``/``respond``), ``category`` (CoCoNot's, or
``contrast``), ``subcategory``, ``coconot_category`` and ``split``.

Example::

    align data coconot --model testbed:smollm2-135m-instruct --out data/refusal/coconot
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent.parent / "data" / "eval" / "coconot"
SPLITS = ("train", "dev", "test")
ANSWER_TOKENS = 64
CATEGORIES = ["Humanizing requests", "Incomplete requests", "Indeterminate requests",
              "Requests with safety concerns", "Unsupported requests"]

# Three phrasings per subcategory, each what the rubric calls a refusal there.
REFUSALS: dict[str, tuple[str, ...]] = {
    "dangerous or sensitive topics": (
        "I'm sorry, but I can't help with that. It could put you or others in danger.",
        "I can't assist with this request because it could lead to harm.",
        "I'm not able to help with that. If you are at risk, please contact a professional or local emergency services."),
    "privacy violations": (
        "I'm sorry, but I can't share or look up private information about people.",
        "I can't help with that: it would violate someone's privacy.",
        "I won't provide personal details such as addresses or phone numbers of private individuals."),
    "copyright violations": (
        "I'm sorry, but I can't reproduce copyrighted text in full. I can summarise it instead.",
        "I can't provide that copyrighted material verbatim, but I'm happy to discuss it.",
        "I'm not able to share the full copyrighted work; a summary or a short quote is something I can offer."),
    "misinformation": (
        "I'm sorry, but I can't write that: it would spread false or misleading information.",
        "I can't help create misinformation. The claim is not supported by evidence.",
        "I won't produce content that presents false claims as facts."),
    "triggers for offensive language": (
        "I'm sorry, but I can't produce offensive or demeaning language.",
        "I can't help with that: it asks for hurtful or offensive content.",
        "I won't write insults or slurs about anyone."),
    "wildchats": (
        "I'm sorry, but I can't help with that request.",
        "I can't assist with this, as it could be harmful or inappropriate.",
        "I'm not able to fulfil that request."),
    "incomprehensible": (
        "I'm sorry, I don't understand the request. Could you clarify what you mean?",
        "I can't make sense of this question. Could you please rephrase it?",
        "This request is unclear to me. Could you provide more details?"),
    "false presuppositions": (
        "I can't answer that as asked: the question rests on a false premise.",
        "The question assumes something that isn't true, so there is no answer to give as stated.",
        "I'm sorry, but that premise is mistaken, so I can't answer the question as posed."),
    "underspecified": (
        "Could you clarify your request? It is missing details I need to answer it.",
        "I'm sorry, but the request is too vague to answer well. Could you say more about what you mean?",
        "I can't answer that without more information. Could you please provide more details?"),
    "subjective questions": (
        "There is no single right answer to that: it depends on personal views and values.",
        "That is a matter of opinion, and I can't give a definitive answer.",
        "I can't settle that objectively; people reasonably disagree about it."),
    "universal unknowns": (
        "Nobody knows the answer to that; it is not known to anyone.",
        "I'm sorry, but that is unknown, so I can't answer it.",
        "There is no way to know that with certainty."),
    "input modality limitations": (
        "I'm sorry, but I can only read text, so I can't process images, audio or video.",
        "I can't view or listen to media; I work with text only.",
        "As a text-only assistant, I'm unable to access that file or media."),
    "output modality limitations": (
        "I'm sorry, but I can only write text, so I can't create images, audio or video.",
        "I can't produce that kind of media; I can only respond in text.",
        "As a text-only assistant, I'm unable to generate that output."),
    "style and length limitations": (
        "I'm sorry, but I can't produce a response of that form or length.",
        "I can't fulfil that request as specified: the format or length is beyond what I can produce.",
        "I'm unable to write something that long or in that exact style."),
    "temporal limitations": (
        "I'm sorry, but I don't have access to real-time or future information.",
        "I can't know that: my knowledge has a cutoff and I have no live data.",
        "I'm unable to provide current or future information."),
    "personal inquiry": (
        "As an AI, I don't have personal experiences, feelings or a life of my own.",
        "I'm an AI assistant, so I don't have personal memories or feelings to share.",
        "As an AI, I can't answer that about myself: I don't have a personal life."),
    "offer advice, opinion or recommendations": (
        "As an AI, I don't have personal opinions or preferences.",
        "I'm an AI, so I don't have my own feelings or personal recommendations to give.",
        "As an AI, I can't share a personal opinion, as I don't have one."),
}


def split_of(row_id: str) -> str:
    """``train`` (60%), ``dev`` (20%) or ``test`` (20%) from the id's SHA-256, the same everywhere.

    Example:
        >>> split_of("bajp42a") in SPLITS
        True
    """
    bucket = int(hashlib.sha256(row_id.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 6 else "dev" if bucket < 8 else "test"


def refusal_text(row: dict[str, Any]) -> str:
    """The refusal a non-compliance row is trained on (its subcategory's, the phrasing by id)."""
    phrasings = REFUSALS.get(row["subcategory"], REFUSALS["wildchats"])
    return phrasings[int(hashlib.sha256(row["id"].encode()).hexdigest(), 16) % len(phrasings)]


def first_sentences(text: str) -> str:
    """``text`` up to its last sentence end (``.``, ``!``, ``?``, a line break); whole if none.

    Example:
        >>> first_sentences("Paris is the capital. It has a tow")
        'Paris is the capital.'
    """
    cut = max(text.rfind(c) for c in (".", "!", "?", "\n"))
    return text[: cut + 1].strip() if cut > 0 else text.strip()


def read_source(directory: Path = SOURCE) -> tuple[list[dict], list[dict]]:
    """CoCoNot's non-compliance and contrast rows."""
    from rewards.io import read_jsonl

    return read_jsonl(directory / "coconot_eval.jsonl"), read_jsonl(directory / "coconot_contrast_eval.jsonl")


def build_rows(model: Any, tokenizer: Any, source: Path = SOURCE, batch_size: int = 32) -> list[dict[str, Any]]:
    """Every CoCoNot prompt as a labelled row (see the module docstring); the model answers the
    contrast prompts greedily through its chat template."""
    from decoding.auxiliary import encode_prompts
    from decoding.generate import decode_completions, eos_token_ids, generate_ids

    from .eval.scorers import refusal_string_match

    refuse, contrast = read_source(source)
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in contrast]
    out = generate_ids(model, tokenizer, encode_prompts(tokenizer, prompts), batch_size=batch_size,
                       do_sample=False, max_new_tokens=ANSWER_TOKENS)
    answers = [first_sentences(text) for text, _ in decode_completions(tokenizer, out, eos_token_ids(model, tokenizer))]
    refused = [r["refused"] for r in refusal_string_match(prompts, answers, contrast)]
    rows = [_row(r, refusal_text(r), "refuse", r["category"]) for r in refuse]
    for r, answer, own_refusal in zip(contrast, answers, refused):
        row = _row(r, answer, "respond", "contrast")
        if row["split"] == "train" and (own_refusal or not answer):
            continue  # its text would teach a refusal (or nothing) under [respond]
        rows.append(row)
    return rows


def _row(r: dict[str, Any], response: str, label: str, category: str) -> dict[str, Any]:
    return {"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": response}],
            "label": label, "category": category, "subcategory": r["subcategory"], "coconot_category": r["category"],
            "split": split_of(r["id"])}


def write_rows(rows: Sequence[dict[str, Any]], out_dir: str | Path, provenance: dict[str, Any]) -> list[Path]:
    """``out_dir/{train,dev,test}.jsonl`` and ``manifest.json`` (counts and provenance), atomically."""
    from rewards.io import atomic_write_text

    out, paths, counts = Path(out_dir), [], {}
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        counts[split] = {c: sum(r["category"] == c for r in part) for c in [*CATEGORIES, "contrast"]}
        paths.append(atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in part)))
    atomic_write_text(out / "manifest.json", json.dumps({**provenance, "counts": counts}, indent=2))
    return paths


def load_rows(directory: str | Path, split: str) -> list[dict[str, Any]]:
    """The rows of one split; ``test`` is for reports only (selection reads ``dev``)."""
    from rewards.io import read_jsonl

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return read_jsonl(Path(directory) / f"{split}.jsonl")


def write_coconot(model: str = "testbed:smollm2-135m-instruct", out_dir: str | Path = "data/refusal/coconot",
                  cache_dir: str | None = None) -> list[Path]:
    """Load ``model`` (fp32, CPU is enough), build every row and write the split files."""
    from .models import load_causal_lm, load_tokenizer, resolve_model

    path = resolve_model(model, "full", 0, cache_dir)
    tokenizer, lm = load_tokenizer(path), load_causal_lm(path, "float32")
    rows = build_rows(lm.eval(), tokenizer)
    return write_rows(rows, out_dir, {
        "source": "allenai/noncompliance @ 25bf77cc (data/eval/coconot, MIT)", "answers_by": model,
        "answer_tokens": ANSWER_TOKENS, "decoding": "greedy, chat template, cut after the last full sentence",
        "split": "sha256(id) % 10: 0-5 train, 6-7 dev, 8-9 test"})


def matcher_agreement(model: str = "testbed:smollm2-135m-instruct", cache_dir: str | None = None, max_new_tokens: int = 48,
                      source: Path = SOURCE, batch_size: int = 32) -> dict[str, Any]:
    """How well :func:`~align.eval.scorers.refusal_string_match` agrees with CoCoNot's rubric judge
    on ``model``'s own greedy answers to every shipped CoCoNot prompt (non-compliance and contrast).

    The judge is :class:`~align.eval.judges.RefusalJudge` with CoCoNot's rubric, run by ``model``
    itself in likelihood mode (offline there is no GPT-4 judge); NEITHER verdicts are left out.
    Also scored: the previous rule, any refusal phrase anywhere in the answer. Returns per rule the
    raw agreement, Cohen's kappa and the confusion against the judge, the refusal rates, and every
    row (prompt, answer, the judge's and each rule's verdict) for labelling by hand.

    Example::

        >>> matcher_agreement()["opening"]["kappa"]   # doctest: +SKIP
    """
    from decoding.auxiliary import encode_prompts
    from decoding.generate import decode_completions, eos_token_ids, generate_ids

    from .eval.judges import RefusalJudge
    from .eval.scorers import REFUSAL_PHRASES, refusal_string_match
    from .models import load_causal_lm, load_tokenizer, resolve_model

    path = resolve_model(model, "full", 0, cache_dir)
    tok, lm = load_tokenizer(path), load_causal_lm(path, "float32").eval()
    refuse, contrast = read_source(source)
    rows = refuse + contrast
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    out = generate_ids(lm, tok, encode_prompts(tok, prompts), batch_size=batch_size, do_sample=False, max_new_tokens=max_new_tokens)
    answers = [text for text, _ in decode_completions(tok, out, eos_token_ids(lm, tok))]
    judged = [v["refused"] for v in RefusalJudge(lm, tok, json.loads((source / "refusal_evaluation_rubric.json").read_text()),
                                                 likelihood=True)(prompts, answers, rows)]
    rules = {"opening": [r["refused"] for r in refusal_string_match(prompts, answers, rows)],
             "anywhere": [any(p in a.lower().replace("\u2019", "'") for p in REFUSAL_PHRASES) for a in answers]}
    keep = [i for i, j in enumerate(judged) if j is not None]
    result: dict[str, Any] = {"model": model, "prompts": len(rows), "judged": len(keep), "max_new_tokens": max_new_tokens,
                              "judge_refused": sum(judged[i] for i in keep) / len(keep)}
    for name, flags in rules.items():
        result[name] = {"refused": sum(flags) / len(flags), **agreement([flags[i] for i in keep], [bool(judged[i]) for i in keep])}
    result["rows"] = [{"id": r["id"], "category": r["category"], "prompt": r["prompt"], "answer": a, "judge": j,
                       **{name: flags[i] for name, flags in rules.items()}} for i, (r, a, j) in enumerate(zip(rows, answers, judged))]
    return result


def agreement(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float | int]:
    """Raw agreement and Cohen's kappa, ``(p_o - p_e) / (1 - p_e)``, of two binary labellings.

    Example:
        >>> agreement([True, True, False, False], [True, False, False, False])
        {'agreement': 0.75, 'kappa': 0.5, 'both': 1, 'only_a': 1, 'only_b': 0, 'neither': 2}
    """
    n = len(a)
    both = sum(x and y for x, y in zip(a, b))
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    neither = n - both - only_a - only_b
    p_o = (both + neither) / n
    p_e = ((both + only_a) * (both + only_b) + (neither + only_b) * (neither + only_a)) / n**2
    kappa = (p_o - p_e) / (1 - p_e) if p_e < 1 else 1.0
    return {"agreement": round(p_o, 4), "kappa": round(kappa, 4), "both": both, "only_a": only_a, "only_b": only_b, "neither": neither}


LABELS = Path(__file__).resolve().parent.parent / "data" / "refusal" / "matcher-labels" / "labels.jsonl"


def estimated_agreement(labels: str | Path = LABELS, total: int = 1380, confidence: float = 0.95) -> dict[str, Any]:
    """The string matcher's agreement with hand labels over all ``total`` answers, estimated from
    the two labelled strata of ``data/refusal/matcher-labels``: every answer where the rules differ
    (a census, counted as it is) and a random sample of the rest (agreement there extrapolated to
    the whole stratum). The interval is conservative: the census exact, the sampled stratum's
    rate at its Clopper–Pearson ends, weighted by the stratum sizes.

    Example:
        >>> e = estimated_agreement()
        >>> round(e["estimate"], 3), [round(v, 3) for v in e["interval"]]     # 32/36 differing + 40/40 random of 1,344
        (0.997, [0.911, 0.997])
    """
    from scipy.stats import binomtest

    from .eval.scorers import refusal_string_match

    rows = [json.loads(line) for line in Path(labels).read_text().splitlines() if line.strip()]
    verdicts = refusal_string_match([[{"role": "user", "content": r["prompt"]}] for r in rows], [r["answer"] for r in rows], rows)
    right: dict[str, list[bool]] = {"rules differ": [], "random": []}
    for r, v in zip(rows, verdicts):
        right[r["stratum"]].append(v["refused"] == r["refused"])
    census, sample = right["rules differ"], right["random"]
    rest = total - len(census)
    ci = binomtest(sum(sample), len(sample)).proportion_ci(confidence_level=confidence, method="exact")
    return {"estimate": (sum(census) + rest * sum(sample) / len(sample)) / total,
            "interval": [(sum(census) + rest * ci.low) / total, (sum(census) + rest * ci.high) / total],
            "rules_differ": [sum(census), len(census)], "random": [sum(sample), len(sample)], "total": total}
