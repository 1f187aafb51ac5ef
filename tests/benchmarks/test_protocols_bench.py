"""`python -m benchmarks protocols` on the tiny backbone: every protocol's requests are answered 200 and
the report has each one's throughput over /v1/classify."""

from __future__ import annotations

import json

from benchmarks.cli import main
from benchmarks.protocols import PROTOCOLS


def test_protocols_level_answers_every_protocol_and_reports_ratios(tmp_path, tiny_backbone_dir):
    code = main(["protocols", "--backbone", str(tiny_backbone_dir), "--synthetic-texts", "--requests", "40",
                 "--concurrency", "4", "--rounds", "2", "--out", str(tmp_path), "--omp-wait-policy", "inherit"])
    assert code == 0
    result = json.loads((tmp_path / "protocols.json").read_text())
    assert [row["protocol"] for row in result["summary"]] == list(PROTOCOLS)
    for row in result["summary"]:
        assert row["non_200"] == 0 and row["inputs_per_s_median"] > 0 and len(row["vs_v1_rounds"]) == 2, row
    assert result["summary"][0]["vs_v1_median"] == 1.0
    assert "| kserve-binary |" in (tmp_path / "protocols.md").read_text()
