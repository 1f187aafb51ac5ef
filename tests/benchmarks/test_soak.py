"""`python -m benchmarks soak` for a fraction of a minute on the tiny backbone: every kind of request
is sent and answered as it should be, no 5xx, RSS sampled over time, and the report renders."""

from __future__ import annotations

import json

from benchmarks.cli import main
from benchmarks.soak import EXPECTED, SoakConfig, summarize
from benchmarks.workload import synthetic_pools


def test_soak_command_runs_mixed_traffic_and_reports_statuses_and_rss(tmp_path, tiny_backbone_dir):
    code = main(["soak", "--backbone", str(tiny_backbone_dir), "--minutes", "0.15", "--samples", "3",
                 "--rate", "30", "--synthetic-texts", "--out", str(tmp_path), "--omp-wait-policy", "inherit"])
    assert code == 0
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["server_errors"] == 0 and result["unexpected"] == {}, result["by_kind"]
    assert {"classify", "upload", "route"} <= set(result["by_kind"])
    assert len(result["samples"]) >= 3
    assert all(s["server_rss_mb"] > 0 and s["engine_rss_mb"] > 0 for s in result["samples"])
    # The prefix cache's gauges come from the admin-only /metrics: the soak must be let in.
    assert all(s["cache_entries"] >= 1 and s["cache_misses"] >= 1 for s in result["samples"])
    assert result["rss"]["growth"] is not None and result["passed"] == result["rss"]["flat"]
    markdown = (tmp_path / "soak.md").read_text()
    assert "## Over time" in markdown and "| classify |" in markdown


def test_soak_verdict_fails_on_growth_5xx_and_unexpected_statuses():
    config = SoakConfig("backbone", minutes=1.0, samples=4)
    samples = [{"t_s": t, "rss_mb": rss} for t, rss in ((5, 100.0), (15, 100.0), (30, 103.0), (60, 104.0))]
    good = summarize(config, samples, {("classify", 200): 10}, 60.0, synthetic_pools())
    assert good["passed"] and good["rss"]["growth"] == 0.04
    grown = summarize(config, samples[:3] + [{"t_s": 60, "rss_mb": 106.0}], {("classify", 200): 10}, 60.0, synthetic_pools())
    assert not grown["passed"] and not grown["rss"]["flat"]
    failed = summarize(config, samples, {("classify", 503): 1, ("no_key", 404): 1}, 60.0, synthetic_pools())
    assert failed["server_errors"] == 1 and set(failed["unexpected"]) == {"classify -> 503", "no_key -> 404"}
    assert 401 in EXPECTED["no_key"]
