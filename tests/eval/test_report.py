"""`align report`: one self-contained page from eval runs and claim results, checked in a real
headless Chromium (no console errors, tables, plots, a working sample filter, a screenshot, and
model text with script/markup shown as text, never run), plus the Markdown summary and bad input."""

import json
from pathlib import Path

import pytest

from browser import chromium_page, fits, needs_chromium, shot

from align.cli import main
from align.config import ConfigError
from align.eval.run import EvalArgs, append_samples, pairwise_summary, summarise
from align.report import ReportArgs, render

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    '<a href="javascript:window.__pwned = 3" id="evil">click</a>',
]


def _run(tmp_path: Path) -> Path:
    """An eval run written by hand: two systems on 6 prompts, with hostile outputs."""
    args = EvalArgs(systems=[{"name": "base", "model": "m"}, {"name": "dpo", "model": "n"}],
                    prompt_sets=[{"name": "chat", "dataset": "d.jsonl", "expect_field": "label"}],
                    scorers=["verifier", "refusal_string"], output_dir=str(tmp_path / "run"), n_bootstrap=200)
    samples = []
    for system, right in (("base", [1, 0, 0, 1, 0, 0]), ("dpo", [1, 1, 0, 1, 1, 0])):
        for i, ok in enumerate(right):
            output = HOSTILE[i % 3] if system == "dpo" and i < 3 else str(i + ok)
            samples.append({"system": system, "prompt_set": "chat", "index": i, "prompt": f"{i}+1=<b>", "output": output,
                            "finished": True, "tokens": 3, "seconds": 0.01,
                            "row": {"answer": str(i + 1), "label": "respond", "category": "respond" if i % 2 else "contrast"},
                            "scores": {"verifier.correct": bool(ok), "refusal_string.refused": False}})
    out = tmp_path / "run"
    out.mkdir()
    append_samples(out / "samples.jsonl", samples)
    (out / "summary.json").write_text(json.dumps(summarise(samples, args)))
    claim = tmp_path / "reproduce" / "dpo-gold"
    claim.mkdir(parents=True)
    (claim / "result.json").write_text(json.dumps({"claim": "DPO <raises> accuracy", "metric": "acc", "value": 0.56,
                                                   "baseline": 0.54, "holds": True}))
    return out


def test_page_escapes_model_text_and_summarises(tmp_path):
    run = _run(tmp_path)
    page, md = render(ReportArgs(runs=[str(run), str(tmp_path / "reproduce")], output=str(tmp_path / "r.html")))
    text = page.read_text()
    for hostile in HOSTILE:
        assert hostile not in text
    # model text travels as JSON with < > & escaped (rendered by textContent); page text by the template engine
    assert "\\u003cscript\\u003ewindow.__pwned = 1\\u003c/script\\u003e" in text and "DPO &lt;raises&gt; accuracy" in text
    assert "http://" not in text and "https://" not in text  # self-contained
    summary = md.read_text()
    # base right on 2 of 6 prompts, dpo on 4: dpo is best; 2 discordant prompts, both dpo's: McNemar p = 2 * 0.5**2
    assert "| base | 0.333 [0.000, 0.667] | 0.000 [" in summary and "| dpo | 0.667 [0.167, 1.000] | 0.000 [" in summary
    assert "| dpo − base | chat | verifier.correct | +0.333 [" in summary and "| mcnemar-exact | 0.500 | 1.000 |" in summary
    assert "| dpo-gold | holds | 0.560 vs 0.540 |" in summary


def _two_systems(tmp_path: Path, n: int = 40) -> Path:
    """base right on prompts 0-9 of 40, good on 0-29 at a tenth of base's tokens/s, same on 1-10."""
    args = EvalArgs(systems=[{"name": "base", "model": "m"}, {"name": "good", "model": "g"}, {"name": "same", "model": "s"}],
                    prompt_sets=[{"name": "chat", "dataset": "d.jsonl"}], scorers=["verifier"], output_dir=str(tmp_path / "two"),
                    n_bootstrap=500)
    right = {"base": range(0, 10), "good": range(0, 30), "same": range(1, 11)}
    samples = [{"system": system, "prompt_set": "chat", "index": i, "prompt": f"q{i}", "output": f"{system} {i}", "finished": True,
                "tokens": 10 if system != "good" else 1, "seconds": 0.1, "row": {"answer": "1"},
                "scores": {"verifier.correct": i in right[system]}} for system in right for i in range(n)]
    out = tmp_path / "two"
    out.mkdir()
    append_samples(out / "samples.jsonl", samples)
    (out / "summary.json").write_text(json.dumps(summarise(samples, args)))
    return out


def test_scoreboard_comparisons_and_sentences_from_the_paired_intervals(tmp_path):
    import math

    from align.report import comparisons, headline, load_runs, scoreboard

    runs, _ = load_runs([str(_two_systems(tmp_path))])
    diffs = comparisons(runs)
    good, same = diffs
    # 20 discordant prompts, all good's: exact McNemar p = 2 * 0.5**20; same: 1 vs 1 -> p = 1; Holm over the two
    assert good["test"] == "mcnemar-exact" and math.isclose(good["p_value"], 2 * 0.5**20)
    assert math.isclose(good["p_holm"], 2 * good["p_value"]) and same["p_value"] == same["p_holm"] == 1.0
    assert good["significant"] and not same["significant"] and math.isclose(good["value"], 0.5) and same["value"] == 0
    board = scoreboard(runs[0], runs, diffs)
    cells = {r["system"]: r["cells"][0] for r in board["rows"]}
    assert [c["metric"] for c in board["columns"]] == ["verifier.correct"]
    assert cells["good"]["best"] and not cells["base"]["best"] and not cells["same"]["best"]
    assert (cells["good"]["mark"], cells["same"]["mark"], cells["base"]["mark"]) == ("up", "", "")
    assert [round(r["tokens_per_s"]) for r in board["rows"]] == [100, 10, 100]
    for row in runs[0].summary["table"]:  # every system ties: the column has no best
        row["metrics"]["verifier.correct"]["value"] = 0.5
    assert not any(r["cells"][0]["best"] for r in scoreboard(runs[0], runs, diffs)["rows"])
    better, same_sentence = headline(board, diffs)
    assert better.startswith("Better than base (Holm-adjusted p <= 0.05, in the good direction): good on chat verifier.correct +0.500 [")
    assert better.endswith("] (Holm p < 0.001), at 0.1× base's tokens/s.")
    assert same_sentence.startswith("Not shown to differ from base (Holm-adjusted p > 0.05): same on chat verifier.correct +0.000 [")


def test_one_verdict_rule_the_adjusted_test_decides_every_place_on_the_page(tmp_path):
    """60 prompts: `edge` fixes 7 of base's misses and breaks none (exact McNemar p = 2 * 0.5**7 =
    0.016, its paired interval excludes 0), four more systems answer as base does (p = 1). Holm
    across the five comparisons: 5 * 0.016 = 0.078 > 0.05, so edge is *not shown to differ*: no
    arrow, no colour, no asterisk, the verdict column, the sentences and the Markdown summary agree."""
    import math

    from align.report import comparisons, load_runs

    names = ["base", "edge", "same1", "same2", "same3", "same4"]
    args = EvalArgs(systems=[{"name": n, "model": n} for n in names], prompt_sets=[{"name": "chat", "dataset": "d.jsonl"}],
                    scorers=["verifier"], output_dir=str(tmp_path / "many"), n_bootstrap=500)
    right = {n: set(range(20)) for n in names} | {"edge": set(range(27))}
    samples = [{"system": n, "prompt_set": "chat", "index": i, "prompt": f"q{i}", "output": f"{n} {i}", "finished": True, "tokens": 5,
                "seconds": 0.1, "row": {"answer": "1"}, "scores": {"verifier.correct": i in right[n]}} for n in names for i in range(60)]
    out = tmp_path / "many"
    out.mkdir()
    append_samples(out / "samples.jsonl", samples)
    summary = summarise(samples, args)
    (out / "summary.json").write_text(json.dumps(summary))
    edge = next(d for d in summary["differences"] if d["system"] == "edge")
    assert math.isclose(edge["p_value"], 2 * 0.5**7) and edge["low"] > 0 and edge["interval_excludes_0"]
    assert math.isclose(edge["p_holm"], 5 * 2 * 0.5**7) and not edge["significant"]  # the run's own summary: the same rule
    runs, _ = load_runs([str(out)])
    assert not next(d for d in comparisons(runs) if d["system"] == "edge")["significant"]
    page, md = render(ReportArgs(runs=[str(out)], output=str(tmp_path / "r.html")))
    html, text = page.read_text(), md.read_text()
    assert '<span class="arrow">' not in html and " up better" not in html and '<span class="sig">differs</span>' not in html
    assert html.count("<td>not shown to differ</td>") == 5
    sentences = [line for line in text.splitlines() if line.startswith("- ")]
    assert sentences == [next(s for s in sentences if s.startswith("- Not shown to differ from base (Holm-adjusted p > 0.05): edge on chat"))]
    assert "Better than" not in html and "Better than" not in text
    assert "| edge | 0.450 [" in text and "| edge | 0.450 [" in text and not any("*" in line for line in text.splitlines() if line.startswith("| edge |"))
    assert "| edge − base | chat | verifier.correct | +0.117 [+0.0" in text and "| 0.016 | 0.078 |" in text


def test_claims_view_from_data_claims(tmp_path):
    from align.report import claim_rows, load_runs

    root = Path(__file__).resolve().parents[2] / "data" / "claims"
    _, claims = load_runs([str(root)])
    files = sorted(root.glob("*.json"))
    assert [c["name"] for c in claims] == [f.stem for f in files]
    rows = {r["name"]: r for r in claim_rows(claims)}
    eft = json.loads((root / "eft-upscaling.json").read_text())
    assert rows["eft-upscaling"]["status"] == eft["status"] == "holds"
    assert rows["eft-upscaling"]["difference"] == f"{eft['difference']['mean']:+.3f} [{eft['difference']['low']:+.3f}, {eft['difference']['high']:+.3f}]"
    assert all(p["passed"] for p in rows["eft-upscaling"]["premise"]) and "chosen" in rows["eft-upscaling"]["selection"]
    # an equivalence claim draws both margins: 0, -margin, +margin
    f = rows["bco-vs-dpo"]["forest"]
    assert len(f["marks"]) == 3 and f["marks"][1] < f["marks"][0] < f["marks"][2] and f["x1"] <= f["x"] <= f["x2"]
    page, md = render(ReportArgs(runs=[str(root)], output=str(tmp_path / "claims.html")))
    assert page.read_text().count('<svg class="forest"') == len(files)
    assert f"| eft-upscaling | holds | {rows['eft-upscaling']['difference']} |" in md.read_text()


def _rich_run(tmp_path: Path) -> Path:
    """A hand-written run with what the plain one lacks: a threshold sweep, two attempts, two
    samples per prompt with a reward, forward tokens, pairwise verdicts and an annotation file."""
    args = EvalArgs(systems=[{"name": "base", "model": "m"}, {"name": "gate", "model": "r", "method": "refusal",
                                                             "sweep": {"threshold": [0.1, 0.5, 0.9]}}],
                    prompt_sets=[{"name": "harmful", "dataset": "h.jsonl", "expect": "refuse"},
                                 {"name": "contrast", "dataset": "c.jsonl", "expect": "respond"}],
                    scorers=["verifier", "refusal_string"],
                    output_dir=str(tmp_path / "rich"), n_bootstrap=200, do_sample=True, samples_per_prompt=2)
    samples = []
    for s_i, system in enumerate(["base", "gate[threshold=0.1]", "gate[threshold=0.5]", "gate[threshold=0.9]"]):
        for set_name in ("harmful", "contrast"):
            for i in range(8):
                for j in range(2):
                    refused = s_i > 0 and (i + j) % 4 < 4 - s_i + (set_name == "harmful")
                    first, second = (i + s_i) % 3 == 0, (i + j + s_i) % 2 == 0
                    samples.append({"system": system, "prompt_set": set_name, "index": i, "sample": j, "prompt": f"q{i}",
                                    "output": f"a{i}{j}", "finished": True, "tokens": 4, "seconds": 0.01,
                                    "forward_tokens": {"testbed:r": 9.0}, "row": {"answer": "1"},
                                    "scores": {"verifier.correct": first, "t2.verifier.correct": second,
                                               "refusal_string.refused": refused, "ensemble.reward": float((i * 7 + j * 3) % 5)}})
    out = tmp_path / "rich"
    out.mkdir()
    append_samples(out / "samples.jsonl", samples)
    summary = summarise(samples, args)
    verdicts = [{"system": "gate[threshold=0.5]", "baseline": "base", "prompt_set": "harmful", "index": i, "preference": p,
                 "conflict": i % 3 == 0, "bpde": 0.5, "unparsed": 0, "length_delta": i - 3}
                for i, p in enumerate([2, 2, 1, 1.5, 2, 1.25, 2, 1])]
    summary["pairwise"] = pairwise_summary(verdicts)
    from align.eval.judges import read_annotations

    (tmp_path / "ann.json").write_text(json.dumps([{"preference": p, "generator_2": "gpt"} for p in (2, 1, 0, 2)]))
    summary["annotations"] = {str(tmp_path / "ann.json"): read_annotations(str(tmp_path / "ann.json"))}
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def test_page_draws_sweeps_transitions_best_of_n_and_win_rates(tmp_path):
    run = _rich_run(tmp_path)
    page, md = render(ReportArgs(runs=[str(run)], output=str(tmp_path / "r.html")))
    text = page.read_text()
    alts = [a for a in text.split('alt="')[1:]]
    titles = [a[: a.index('"')] for a in alts]
    assert "gate: each metric vs threshold (95% interval)" in titles  # among them the refusal curve
    assert "self-correction transitions (attempt 1 → 2)" in titles
    assert "best-of-n (95% interval)" in titles and "head-to-head win rate" in titles
    # win rates exactly as AlpacaEval: mean(p - 1) over [2, 2, 1, 1.5, 2, 1.25, 2, 1] = 4.75 / 8; annotations: 0 is a draw
    summary = md.read_text()
    assert "| rich | gate[threshold=0.5] vs base (harmful) | 59.4 ± 16.3 | 56.2 | 4 / 1 / 3 | " in summary
    assert "| rich | gpt (ann.json) | 62.5 ± 23.9 | 62.5 | 2 / 1 / 1 | – |" in summary
    assert "testbed:r: 144" in text  # forward tokens: 16 samples x 9
    entry = next(e for e in json.loads((run / "summary.json").read_text())["table"] if e["system"] == "base" and e["prompt_set"] == "harmful")
    (curve,) = entry["best_of_n"]
    assert [p["best_of"] for p in curve["curve"]] == [1, 2]


def test_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no summary.json"):
        render(ReportArgs(runs=[str(tmp_path / "empty")]))
    with pytest.raises(ConfigError, match="does not exist"):
        render(ReportArgs(runs=[str(tmp_path / "nope")]))
    assert main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "x.html")]) == 2


@needs_chromium
def test_page_in_headless_chromium(tmp_path):
    run = _run(tmp_path)
    assert main(["report", str(run), str(tmp_path / "reproduce"), "-o", str(tmp_path / "report.html")]) == 0
    with chromium_page() as (page, errors):
        page.goto((tmp_path / "report.html").as_uri())
        assert page.locator("table.scoreboard tbody tr").count() == 2 and page.locator("p.sentence").count() >= 1
        assert page.locator("table.scoreboard td.best").count() == 1  # dpo's accuracy; the refusal column has no direction
        fits(page)
        # the sample browser: filters give the right counts
        assert page.locator("tr.sample").count() == 12 and page.locator("#count").text_content() == "12 of 12 samples"
        page.select_option('select[data-filter="system"]', "dpo")
        assert page.locator("#count").text_content() == "6 of 12 samples"
        page.select_option('select[data-filter="correct"]', "no")
        assert page.locator("#count").text_content() == "2 of 12 samples" and page.locator("tr.sample").count() == 2
        page.select_option('select[data-filter="correct"]', "")
        page.fill("#search", "pwned")
        assert page.locator("#count").text_content() == "3 of 12 samples"
        # hostile outputs are text: nothing ran, no element was made from them
        assert page.evaluate("window.__pwned") is None and page.locator("#evil").count() == 0
        assert "<script>window.__pwned = 1</script>" in page.locator("#sample-table").inner_text()
        page.fill("#search", "")
        page.select_option('select[data-filter="model"]', "n")
        assert page.locator("#count").text_content() == "6 of 12 samples"
        page.select_option('select[data-filter="model"]', "")
        # side by side: base right on 0, 3; dpo on 0, 1, 3, 4
        assert page.locator("#sbs-count").text_content() == "6 of 6 pairs"
        for outcome, n in (("a_wrong_b_right", 2), ("both_wrong", 2), ("both_right", 2), ("outputs_differ", 4)):
            page.select_option("#sbs-outcome", outcome)
            assert page.locator("#sbs-count").text_content() == f"{n} of 6 pairs" and page.locator("tr.pair").count() == n
        assert page.locator("#sbs-outcome option").count() == 6  # all + the five that occur (verdicts differ on 1, 4)
        page.select_option("#sbs-outcome", "")
        page.fill("#sbs-search", "pwned")
        assert page.locator("#sbs-count").text_content() == "3 of 6 pairs"
        assert "<img src=x onerror" in page.locator("#sbs").inner_text() and page.locator("#sbs ins").count() > 0
        # a permalink opens its sample (filters reset), j moves to the next one and updates the hash
        page.select_option('select[data-filter="system"]', "base")
        page.goto((tmp_path / "report.html").as_uri() + "#sample=run%2Fdpo%2Fchat%2F4%2F0")
        page.wait_for_selector("tr.sel")
        assert page.locator("tr.sel a.perma").get_attribute("title") == "permalink: run/dpo/chat/4/0"
        page.keyboard.press("j")
        assert page.locator("tr.sel a.perma").get_attribute("title") == "permalink: run/dpo/chat/5/0"
        assert page.evaluate("location.hash") == "#sample=run%2Fdpo%2Fchat%2F5%2F0"
        fits(page)
        shot(page, tmp_path / "report.png")
        # the page with sweeps, transitions, best-of-n and pairwise plots loads cleanly too
        assert main(["report", str(_rich_run(tmp_path)), "-o", str(tmp_path / "rich.html")]) == 0
        page.goto((tmp_path / "rich.html").as_uri())
        assert page.locator('img[alt="head-to-head win rate"]').count() == 1
        assert page.locator('img[alt="gate: each metric vs threshold (95% interval)"]').evaluate("i => i.naturalWidth") > 100
        page.select_option('select[data-filter="method"]', "refusal")
        assert page.locator("#count").text_content() == "96 of 128 samples"
        fits(page)
    assert not errors, errors


def _coconot_run(tmp_path: Path, n: int = 40) -> Path:
    """Two systems on shipped CoCoNot prompts (n to refuse, n contrast), scored by the real string
    matcher: base refuses every third prompt, tuned every prompt to refuse and every tenth contrast one;
    some answers are long (folded) and one is hostile."""
    from align.eval.scorers import refusal_string_match

    data = Path(__file__).resolve().parents[2] / "data" / "eval" / "coconot"
    sets = {"coconot": [json.loads(x) for x in (data / "coconot_eval.jsonl").read_text().splitlines()[:n]],
            "contrast": [json.loads(x) for x in (data / "coconot_contrast_eval.jsonl").read_text().splitlines()[:n]]}
    args = EvalArgs(systems=[{"name": "base", "model": "m"}, {"name": "tuned", "model": "t"}],
                    prompt_sets=[{"name": "coconot", "dataset": "a.jsonl", "expect": "refuse"},
                                 {"name": "contrast", "dataset": "b.jsonl", "expect": "respond"}],
                    scorers=["refusal_string", "length"], output_dir=str(tmp_path / "coconot-run"), n_bootstrap=300)
    samples = []
    for system in ("base", "tuned"):
        for set_name, rows in sets.items():
            for i, row in enumerate(rows):
                refuse = i % 3 == 0 if system == "base" else (set_name == "coconot" or i % 10 == 0)
                output = ("I'm sorry, but I can't help with that request." if refuse else
                          f"Sure. Here is an answer about: {row['prompt']}\n" + "Step by step, with details. " * (40 if i % 7 == 0 else 3))
                if system == "tuned" and i == 1:
                    output += HOSTILE[0]
                scores = {f"refusal_string.{k}": v for k, v in refusal_string_match([], [output], [])[0].items()}
                samples.append({"system": system, "prompt_set": set_name, "index": i, "prompt": [{"role": "user", "content": row["prompt"]}],
                                "output": output, "finished": True, "tokens": len(output) // 4, "seconds": 0.05,
                                "row": {**row, "category": row["category"]}, "scores": {**scores, "length.chars": len(output)}})
    out = tmp_path / "coconot-run"
    out.mkdir()
    append_samples(out / "samples.jsonl", samples)
    (out / "summary.json").write_text(json.dumps(summarise(samples, args)))
    return out


@needs_chromium
def test_two_system_coconot_report_with_claims_in_chromium(tmp_path):
    run = _coconot_run(tmp_path)
    claims = Path(__file__).resolve().parents[2] / "data" / "claims"
    page_path, md = render(ReportArgs(runs=[str(run), str(claims)], output=str(tmp_path / "coconot.html"), title="CoCoNot: base vs tuned"))
    with chromium_page() as (page, errors):
        page.goto(page_path.as_uri())
        # tuned refuses all 40 prompts to refuse (base 14) and 4 of 40 contrast prompts (base 14): better on both
        assert page.locator("table.scoreboard td.best").count() == 2 and page.locator("table.scoreboard td.better").count() == 2
        assert page.locator("table.scoreboard td.up").count() == 1 and page.locator("table.scoreboard td.down").count() == 1
        assert page.locator("table.claims tbody tr").count() == len(list(claims.glob("*.json")))
        assert page.locator("#sbs-count").text_content() == "80 of 80 pairs"
        page.select_option("#sbs-outcome", "a_answered_b_refused")
        assert page.locator("#sbs-count").text_content() == "28 of 80 pairs"  # coconot: the 26 base answered; contrast i = 10, 20
        page.select_option("#sbs-outcome", "a_refused_b_answered")
        assert page.locator("#sbs-count").text_content() == "12 of 80 pairs"  # contrast i % 3 == 0 and i % 10 != 0
        page.select_option("#sbs-outcome", "")
        first = page.locator("tr.pair").first.inner_text()
        assert "refused" in first and "answered" in first  # sorted by disagreement of the verdicts
        assert page.locator("button.more").count() > 0  # long answers fold
        fits(page)
        shot(page, tmp_path / "coconot-report.png")
    assert not errors, errors


@needs_chromium
def test_sample_browser_stays_paginated_at_50k_samples(tmp_path):
    from align.eval.run import EvalArgs as Args

    n = 25_000
    args = Args(systems=[{"name": "a", "model": "m"}, {"name": "b", "model": "n"}], prompt_sets=[{"name": "s", "dataset": "d.jsonl"}],
                scorers=["verifier"], output_dir=str(tmp_path / "big"), n_bootstrap=50)
    samples = [{"system": system, "prompt_set": "s", "index": i, "prompt": f"question {i}?", "output": f"answer {i} from {system}",
                "finished": True, "tokens": 5, "seconds": 0.001, "row": {"answer": "1"},
                "scores": {"verifier.correct": (i + (system == "b")) % 3 == 0}} for system in ("a", "b") for i in range(n)]
    out = tmp_path / "big"
    out.mkdir()
    append_samples(out / "samples.jsonl", samples)
    (out / "summary.json").write_text(json.dumps(summarise(samples, args)))
    page_path, _ = render(ReportArgs(runs=[str(out)], output=str(tmp_path / "big.html")))
    with chromium_page() as (page, errors):
        page.goto(page_path.as_uri())
        assert page.locator("#count").text_content() == "50000 of 50000 samples"
        assert page.locator("tr.sample").count() == 50 and page.locator("#page").text_content() == "page 1 of 1000"
        assert page.locator("tr.pair").count() == 20 and page.locator("#sbs-count").text_content() == "25000 of 25000 pairs"
        page.fill("#search", "answer 24999 from b")
        assert page.locator("#count").text_content() == "1 of 50000 samples"
        page.fill("#search", "")
        page.select_option('select[data-filter="correct"]', "yes")
        right = sum((i + (system == "b")) % 3 == 0 for system in "ab" for i in range(n))  # 8334 + 8333
        assert page.locator("#count").text_content() == f"{right} of 50000 samples" and right == 16667
        page.goto(page_path.as_uri() + "#sample=big%2Fb%2Fs%2F24999%2F0")
        page.wait_for_selector("tr.sel")
        assert page.locator("#page").text_content() == "page 1000 of 1000"
        fits(page)
    assert not errors, errors


def test_every_field_is_escaped_and_only_the_pages_own_script_may_run(tmp_path):
    """Fields that used to reach the page unescaped (a sample's index, forward-token model names,
    refusal-rate set names), and a CSP that names the page's script and style by hash."""
    import base64
    import hashlib
    import re

    run = _run(tmp_path)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    samples[0]["index"] = HOSTILE[1]
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    summary = json.loads((run / "summary.json").read_text())
    summary["table"][0]["compute"]["forward_tokens"] = {HOSTILE[0]: 3}
    summary["refusal"] = [{"system": "dpo", "scorer": "refusal_string", "rate": {HOSTILE[2]: {"value": 0.5, "low": 0.1, "high": 0.9}},
                           "over_refusal": 0.0, "f1": 1.0, "confusion": {"tp": 1, "fn": 0, "fp": 0, "tn": 1}, "unlabelled": 0}]
    (run / "summary.json").write_text(json.dumps(summary))
    text = render(ReportArgs(runs=[str(run)], output=str(tmp_path / "r.html")))[0].read_text()
    for hostile in HOSTILE:
        assert hostile not in text
    csp = re.search(r'Content-Security-Policy" content="([^"]*)"', text).group(1)
    assert "unsafe-inline" not in csp
    scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
    styles = re.findall(r"<style>(.*?)</style>", text, re.S)
    assert len(scripts) == len(styles) == 1
    for body, directive in ((scripts[0], "script-src"), (styles[0], "style-src")):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in csp


def test_a_judge_without_a_verdict_is_counted_shown_and_warned_about(tmp_path):
    """The rubric judge answers NEITHER (score None) on 15 of base's 16 answers and on all of
    chat's: the rate is over the 1 judged, and the summary, the scoreboard cell, the Markdown and
    the sentences say so; a 1-in-16 abstention (6%) is shown but not warned about."""
    args = EvalArgs(systems=[{"name": "base", "model": "m"}, {"name": "chat", "model": "c"}],
                    prompt_sets=[{"name": "refusal", "dataset": "d.jsonl", "expect": "refuse"}],
                    scorers=["refusal_judge", "refusal_string"], output_dir=str(tmp_path / "judge"), n_bootstrap=200)
    verdict = {"base": [True] + [None] * 15, "chat": [None] * 16}
    samples = [{"system": s, "prompt_set": "refusal", "index": i, "prompt": f"q{i}", "output": "no", "finished": True, "tokens": 2,
                "seconds": 0.1, "row": {}, "scores": {"refusal_judge.refused": verdict[s][i], "refusal_string.refused": i != 3}}
               for s in verdict for i in range(16)]
    out = tmp_path / "judge"
    out.mkdir()
    append_samples(out / "samples.jsonl", samples)
    summary = summarise(samples, args)
    (out / "summary.json").write_text(json.dumps(summary))
    base, chat = summary["table"]
    assert base["abstentions"] == {"refusal_judge.refused": {"no_verdict": 15, "samples": 16}}
    assert base["metrics"]["refusal_judge.refused"]["judged"] == 1 and base["metrics"]["refusal_judge.refused"]["value"] == 1.0
    assert "refusal_judge.refused" not in chat["metrics"] and chat["abstentions"]["refusal_judge.refused"]["no_verdict"] == 16
    assert summary["warnings"] == [
        "base on refusal: refusal_judge.refused gave no verdict on 15 of 16 samples (94%); its rate 1.000 is over the 1 judged",
        "chat on refusal: refusal_judge.refused gave no verdict on 16 of 16 samples (100%); no rate"]
    page, md = render(ReportArgs(runs=[str(out)], output=str(tmp_path / "r.html")))
    text, html = md.read_text(), page.read_text()
    assert "| base | 1.000 [0.025, 1.000] (no verdict on 15 of 16; rate over 1) |" in text  # 1/1: Clopper-Pearson, not [1, 1]
    assert "| chat | – (no verdict on 16 of 16; rate over 0) |" in text
    assert "- Warning: a scorer gave no verdict on over 10% of the samples" in text and "base on refusal refusal_judge.refused" in text
    assert html.count('class="meta warn">no verdict on') == 1 and 'class="warn">–<br><span class="meta">no verdict on 16 of 16' in html
