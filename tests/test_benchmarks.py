"""The benchmark statistics and RESULTS.md rendering (the suites themselves run by hand:
``python -m benchmarks NAME``; they are measurements, not tests)."""

import json
import statistics

import pytest

from benchmarks import Race, judged, meets, race, ratio, statistic, summarise
from benchmarks import report


def test_summarise_quartiles_by_hand():
    # inclusive quartiles of 1..8: positions 1 + 7/4 and 1 + 21/4 -> 2.75 and 6.25
    assert summarise([8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0]) == {"median": 4.5, "iqr": [2.75, 6.25], "n": 8}
    assert summarise([3.0]) == {"median": 3.0, "iqr": [3.0, 3.0], "n": 1}


def test_ratio_is_per_round_not_ratio_of_medians():
    """A slow round of both contenders (another tenant) cancels within its round."""
    r = Race(wall={"a": [1.0, 10.0, 1.1], "b": [1.0, 10.0, 1.0]}, cpu={"a": [2.0, 2.0, 3.0], "b": [1.0, 1.0, 1.0]})
    wall = ratio(r, "a", "b", clock="wall")
    assert wall["median"] == 1.0 and wall["iqr"] == [1.0, 1.05] and wall["cpu_median"] == 2.0
    # weighted and summed terms: (a) / (2 b) and (a + b) / b per round
    assert ratio(r, "a", {"b": 2.0})["median"] == 1.0
    assert ratio(r, ["a", "b"], "b")["iqr"] == [3.0, 3.5]
    assert statistic(r, lambda t: t["a"] - t["b"])["median"] == 1.0


def test_meets_by_the_unfavourable_quartile():
    assert meets({"iqr": [0.9, 1.09]}, 1.1, "<=") and not meets({"iqr": [0.9, 1.11]}, 1.1, "<=")
    assert meets({"iqr": [1.5, 9.0]}, 1.5, ">=") and not meets({"iqr": [1.49, 9.0]}, 1.5, ">=")
    stat = judged({"median": 1.0, "iqr": [0.95, 1.2], "n": 5}, "<=", 1.1)
    assert stat["goal"] == "<= 1.1" and stat["met"] is False  # the median alone would say met


def test_race_interleaves_and_reads_both_clocks():
    order = []
    result = race({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert len(result.wall["a"]) == len(result.cpu["b"]) == 3
    busy = race({"spin": lambda: sum(range(200_000))}, rounds=2, warmup=0)
    assert all(c > 0 for c in busy.cpu["spin"])


def test_report_renders_a_table_per_results_file(tmp_path, monkeypatch):
    stat = judged({"median": 1.2, "iqr": [1.1, 1.3], "n": 9, "clock": "cpu", "wall_median": 1.25}, "<=", 1.25)
    (tmp_path / "decoding.json").write_text(json.dumps({
        "benchmark": "decoding", "command": "python -m benchmarks decoding", "date": "2026-12-04", "machine": "x86_64",
        "results": {"dlf_over_eft": stat, "paths": {"rounds": 17}}}))
    (tmp_path / "testbed.json").write_text(json.dumps({"benchmark": "testbed", "results": {"b1": {"large": 1.1}}}))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "decoding.md").write_text("A profile showed this.")
    monkeypatch.setattr(report, "NOTES", notes)
    text = report.render(tmp_path)
    assert text.index("## testbed") < text.index("## decoding")  # suite order, not file order
    assert "`python -m benchmarks decoding` — 2026-12-04" in text
    assert "| `dlf_over_eft` | 1.200 [1.100, 1.300] | 9 | cpu (wall 1.25) | <= 1.25 | **no** |" in text
    assert "| `paths.rounds` | 17 |" in text and "A profile showed this." in text
    assert "no spread" in text.split("## decoding")[0]  # the legacy best-of file says so
    assert report.summary_lines({"x": {"dlf_over_eft": stat}}) == [
        "x.dlf_over_eft: 1.200 [1.100, 1.300] n=9 cpu (wall 1.25)  <= 1.25: NOT met by the quartile"]


def test_committed_results_md_is_the_rendering_of_the_results_files():
    """RESULTS.md is generated: a hand edit (or a results file without a regenerate) fails here."""
    assert report.RESULTS_MD.read_text() == report.render()


@pytest.mark.parametrize("values", [[1.0, 2.0], [5.0, 1.0, 3.0, 2.0, 4.0]])
def test_summarise_median_matches_statistics(values):
    assert summarise(values)["median"] == statistics.median(values)


def test_docstring_examples():
    import doctest

    import benchmarks

    assert doctest.testmod(benchmarks).failed == 0 and doctest.testmod(report).failed == 0
