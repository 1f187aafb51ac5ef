"""`python -m benchmarks` smoke tests on the tiny backbone: the workload is deterministic, every level
runs end to end with tiny sizes and yields the keys the report needs, the seed baseline computes what
the engine computes, and the report renders."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from benchmarks import analysis, report
from benchmarks.cli import main
from benchmarks.engine_level import MODES, EngineBenchConfig, limit_batches, run_engine_bench
from benchmarks.seed_model import SeedModel
from benchmarks.workload import (
    DataMissing,
    build_tasks,
    generate_requests,
    load_text_pools,
    make_tasks,
    synthetic_pools,
)
from server.batching import BatchLimits
from tests.conftest import SHARED_DATA

RUN_KEYS = {"tasks", "inputs_per_request", "mode", "inputs_per_s", "latency", "requests", "inputs", "wall_s"}


def test_request_stream_is_deterministic_and_the_same_texts_for_every_task_count():
    pools = synthetic_pools(1)
    first = generate_requests(pools, 8, 50, 16, seed=3)
    assert first == generate_requests(pools, 8, 50, 16, seed=3)
    assert all(len(r.inputs) == 16 and 0 <= r.task < 8 for r in first)
    other_tasks = generate_requests(pools, 512, 50, 16, seed=3)
    assert [r.inputs for r in other_tasks] == [r.inputs for r in first]
    assert [r.task for r in other_tasks] != [r.task for r in first]
    assert generate_requests(pools, 8, 50, 16, seed=4) != first


def test_tasks_mix_prefix_lengths_labels_and_tenants():
    tasks = make_tasks(64, seed=0, num_tenants=8)
    assert tasks == make_tasks(64, seed=0, num_tenants=8)
    lengths = [t.prefix_len for t in tasks]
    assert min(lengths) == 4 and max(lengths) == 64 and abs(sum(lengths) / 64 - 34) < 0.5
    assert {t.num_labels for t in tasks} <= set(range(2, 7)) and len({t.num_labels for t in tasks}) > 2
    assert len({t.tenant for t in tasks}) == 8 and len({t.name for t in tasks}) == 64
    assert [t.prefix_len for t in make_tasks(1)] == [34]


def test_missing_data_fails_with_a_clear_message(tmp_path):
    with pytest.raises(DataMissing, match=r"sst2\.dev\.jsonl.*--data"):
        load_text_pools(tmp_path)


@pytest.mark.skipif(not (SHARED_DATA / "sst2.dev.jsonl").is_file(), reason="the shared data folder is absent")
def test_real_texts_load():
    pools = load_text_pools(SHARED_DATA)
    assert set(pools.sources) == {"sst2", "trec", "mrpc"}
    assert len(pools.sources["sst2"]) == 872 and len(pools.sources["trec"]) == 5952
    assert all(isinstance(pair, tuple) and len(pair) == 2 for pair in pools.sources["mrpc"])


def test_limit_batches_are_sorted_and_bounded():
    lengths = [5, 40, 3, 17, 9, 40, 2, 33] * 10
    limits = BatchLimits(max_batch_size=8, max_batch_tokens=160)
    batches = limit_batches(lengths, limits)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)
    assert all(len(b) <= 8 and sum(lengths[i] for i in b) <= 160 for b in batches)


def test_seed_baseline_matches_the_engine(tiny_engine, tiny_backbone_dir):
    seed = SeedModel(tiny_backbone_dir)
    tasks = build_tasks(tiny_engine.shape, make_tasks(3, seed=5))
    inputs = [["a short one", "a much longer sentence about a movie that goes on"], [("is it?", "yes it is"), ("a", "b c d")]]
    for task in tasks:
        handle = tiny_engine.load(task.artifact)
        for batch in inputs:
            rows = [(e, handle) for e in tiny_engine.encode(batch, task.spec.prefix_len)]
            for got, want in zip(seed.classify(task.artifact, batch), tiny_engine.score_encoded(rows)):
                assert max(abs(g - w) for g, w in zip(got, want)) < 1e-4


def test_engine_level_runs_end_to_end(tiny_backbone_dir):
    config = EngineBenchConfig(str(tiny_backbone_dir), tasks=[1, 4], inputs_per_request=[1, 4], inputs_per_run=48, concurrency=4,
                               repeats=2, seed_seconds=0.05)
    result = report.analyse(run_engine_bench(config, synthetic_pools(), progress=lambda line: None))
    modes = {(r["tasks"], r["inputs_per_request"], r["mode"]) for r in result["runs"]}
    assert modes == {(t, k, m) for t in (1, 4) for k in (1, 4) for m in MODES}
    for run in result["runs"]:
        assert set(run) >= RUN_KEYS and run["inputs_per_s"] > 0 and run["latency"]["p99_ms"] > 0, run
        if run["mode"] != "seed":
            assert 0 <= run["padding_fraction"] < 1 and run["batch_size"]["max"] >= 1
            assert 0 <= run["packed_key_padding_fraction"] < 1
    batched = [r for r in result["runs"] if r["mode"] == "prefix-server"]
    assert all(0 < r["inputs"] <= 96 and len(r["rounds_inputs_per_s"]) == 2 for r in batched)  # 2 rounds of <= 48
    assert {(r["tasks"], r["inputs_per_request"]) for r in result["ratios"]} == {(t, k) for t in (1, 4) for k in (1, 4)}
    assert all(r["vs_in_process"] > 0 for r in result["ratios"])
    assert {(d["tasks"], d["inputs_per_request"]) for d in result["decomposition"]} == {(t, k) for t in (1, 4) for k in (1, 4)}
    assert all(d["layout"] > 0 and d["prefixes"] > 0 and d["serving"] > 0 for d in result["decomposition"])
    replayed = [r for r in result["runs"] if r["mode"] == "replay"]
    assert all(r["inputs"] >= 2 * 48 for r in replayed)  # every batch prefix-server formed, warm-up included
    assert any(t["target"].startswith("prefix-server vs backbone-alone limit") for t in result["targets"])
    text = report.render(result)
    assert "| tasks | inputs/req | mode | inputs/s" in text and "prefix-server" in text
    json.dumps(result)


def test_open_loop_crossing_is_interpolated():
    def run(mode, rate, p99):
        return {"mode": mode, "rate_rps": rate, "inputs_per_s": rate, "latency": {"p99_ms": p99}}

    runs = [run("per-task", 10, 20), run("per-task", 20, 400), run("prefix-server", 10, 10), run("prefix-server", 20, 20),
            run("prefix-server", 40, 90), run("prefix-server", 80, 300)]
    summary = analysis.open_loop_summary(runs, 100.0)
    crossing = summary["crossing"]
    assert crossing["interpolated"] and 10 < crossing["rate_rps"] < 20
    expected_rate = 10 + 10 * math.log(100 / 20) / math.log(400 / 20)
    assert crossing["rate_rps"] == pytest.approx(expected_rate, abs=0.01)
    assert 10 < crossing["prefix_server_p99_ms"] < 20 and crossing["p99_ratio"] > 5
    assert summary["sustainable_inputs_per_s"] == {"per-task": 10, "prefix-server": 40}
    assert summary["sustainable_ratio"] == 4.0


def test_memory_level_runs_end_to_end(tmp_path, tiny_backbone_dir):
    code = main(["memory", "--backbone", str(tiny_backbone_dir), "--resident", "1,20", "--copies", "1,2",
                 "--out", str(tmp_path), "--omp-wait-policy", "inherit"])
    assert code == 0
    result = json.loads((tmp_path / "memory.json").read_text())
    assert [r["tasks"] for r in result["resident"]] == [1, 20]
    assert result["resident"][1]["prefix_mb"] > 0 and result["resident"][1]["rss_resident_mb"] > 0
    rows = result["comparison"][1:]
    assert rows[1]["separate_models_extrapolated"] and not rows[0]["separate_models_extrapolated"]
    target = result["targets"][0]
    budget_mb = max(rows, key=lambda row: row["tasks"])["budget_mb"]
    assert target["met"] is (target["measured"] <= budget_mb), target  # the verdict follows the figures
    assert [r["tasks"] for r in result["served"]] == [0, 1, 20]  # serve itself, over HTTP
    assert all(r["rss_mb"] > 0 for r in result["served"])
    assert "backbone copies" in (tmp_path / "memory.md").read_text()


def test_engine_command_writes_json_and_markdown(tmp_path, tiny_backbone_dir):
    code = main(["engine", "--synthetic-texts", "--backbone", str(tiny_backbone_dir), "--tasks", "1,2",
                 "--inputs-per-request", "2", "--inputs-per-run", "8", "--repeats", "1", "--seed-seconds", "0.05",
                 "--out", str(tmp_path), "--omp-wait-policy", "inherit"])
    assert code == 0
    result = json.loads((tmp_path / "engine.json").read_text())
    assert {"environment", "runs", "ratios", "scaling", "targets", "config"} <= set(result)
    assert result["environment"]["command"] and result["environment"]["cpu_cores"]
    assert "synthetic texts (--synthetic-texts)" in result["notes"]
    assert (tmp_path / "engine.md").read_text().startswith("# prefix-server bench: engine level")


def test_engine_command_without_data_says_where_it_looked(tmp_path, tiny_backbone_dir, capsys):
    code = main(["engine", "--backbone", str(tiny_backbone_dir), "--data", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path), "--omp-wait-policy", "inherit"])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_http_level_runs_end_to_end(tiny_backbone_dir):
    from benchmarks.http_level import HttpBenchConfig, run_http_bench

    config = HttpBenchConfig(str(tiny_backbone_dir), tasks=[3], inputs_per_request=[2], inputs_per_run=16, concurrency=2,
                             open_loop_tasks=3, open_loop_inputs_per_request=2, rates=[20.0], open_loop_seconds=1.0,
                             modes=("prefix-server", "per-task"))
    result = report.analyse(run_http_bench(config, synthetic_pools(), progress=lambda line: None))
    runs = {r["mode"]: r for r in result["runs"]}
    assert set(runs) == {"limit", "prefix-server", "per-task"}
    for mode in ("prefix-server", "per-task"):
        assert runs[mode]["statuses"] == {"200": runs[mode]["requests"]} and runs[mode]["inputs_per_s"] > 0
        assert runs[mode]["server_memory"]["peak_rss_mb"] > 0
    assert 0 < runs["prefix-server"]["inputs"] <= 16 and runs["prefix-server"]["forwards"] >= 1  # the steady window
    assert runs["prefix-server"]["tokens_per_forward"] > 0
    assert {r["mode"] for r in result["open_loop"]} == {"prefix-server", "per-task"}
    assert all(r["statuses"].get("200") for r in result["open_loop"])
    assert "Open loop" in report.render(result)


def test_seed_server_answers_like_prefix_server(tmp_path, tiny_engine, tiny_backbone_dir):
    from fastapi.testclient import TestClient

    from benchmarks.http_servers import write_task_files
    from benchmarks.seed_server import create_seed_app

    task = build_tasks(tiny_engine.shape, make_tasks(1, seed=2))[0]
    write_task_files([task], tmp_path)
    client = TestClient(create_seed_app(str(tiny_backbone_dir), str(tmp_path)))
    body = {"task": task.spec.name, "inputs": ["a fine film", {"text": "is it?", "text_pair": "it is"}]}
    answer = client.post("/v1/classify", json=body).json()
    handle = tiny_engine.load(task.artifact)
    rows = [(e, handle) for e in tiny_engine.encode(["a fine film", ("is it?", "it is")], task.spec.prefix_len)]
    for result, want in zip(answer["results"], tiny_engine.score_encoded(rows)):
        assert list(result["scores"]) == list(task.artifact.labels) and result["label"] in task.artifact.labels
        assert max(abs(g - w) for g, w in zip(result["scores"].values(), want)) < 1e-4
    assert client.post("/v1/classify", json={"task": "missing", "inputs": ["x"]}).status_code == 404


def test_steady_window_opens_at_the_end_of_a_burst(monkeypatch):
    from benchmarks import stats

    # "a" is warm-up; "b" (the warm-up's last) arms at 1.0; "c" at 1.0002 is the same burst (not
    # counted); "d" and "e" at 2.0 and 2.0001 are the next forward's burst (counted); finished at 3.0.
    clock = iter([1.0, 1.0002, 2.0, 2.0001, 3.0])
    monkeypatch.setattr(stats.time, "perf_counter", lambda: next(clock))
    armed = []
    window = stats.SteadyWindow(warmup=2, on_arm=lambda: armed.append(True), gap_s=0.01)
    for item in "abcde":
        window.completed(item)
    assert armed == [True]
    counted, length = window.finish()
    assert counted == ["d", "e"] and length == pytest.approx(1.9998)


def test_steady_window_without_a_gap_counts_from_the_arming(monkeypatch):
    from benchmarks import stats

    clock = iter([1.0, 1.001, 1.002, 1.5])
    monkeypatch.setattr(stats.time, "perf_counter", lambda: next(clock))
    window = stats.SteadyWindow(warmup=1, gap_s=0.01)
    for item in "abc":
        window.completed(item)
    assert window.finish() == (["b", "c"], pytest.approx(0.5))


@pytest.mark.skipif(not (SHARED_DATA / "sst2.dev.jsonl").is_file(), reason="the shared data folder is absent")
def test_precision_level_compares_dtypes_on_the_demo_tasks(tmp_path, minilm_dir):
    code = main(["precision", "--quick", "--data", str(SHARED_DATA), "--dtypes", "bfloat16",
                 "--backbone", str(minilm_dir), "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "precision-quick.json").read_text())
    assert {(r["dtype"], r["task"]) for r in result["tasks"]} == {
        (d, t) for d in ("float32", "bfloat16") for t in ("sentiment", "question-type", "paraphrase")}
    reference = [r for r in result["tasks"] if r["dtype"] == "float32"]
    assert all(r["max_abs_diff"] == 0 and r["label_agreement"] == 1 for r in reference)
    half = [r for r in result["tasks"] if r["dtype"] == "bfloat16"]
    assert all(0 < r["max_abs_diff"] < 0.2 and r["rows"] == 64 for r in half)
    assert {t["met"] for t in result["targets"]} <= {True, False} and len(result["targets"]) == 3


def test_wrk_summary_is_read_in_the_bench_units():
    from benchmarks.external import parse_wrk

    output = ("Running 15s test @ http://127.0.0.1:1234\n  2 threads and 64 connections\n"
              '{"requests": 3000, "duration_us": 15000000, "non_2xx": 0, "connect_errors": 0, "read_errors": 0, '
              '"timeouts": 0, "p50_us": 180000, "p90_us": 210000, "p99_us": 260500, "mean_us": 181234.5, "max_us": 300000}\n')
    parsed = parse_wrk(output, inputs_per_request=2)
    assert parsed["inputs_per_s"] == 400.0 and parsed["p99_ms"] == 260.5 and parsed["p50_ms"] == 180.0
    assert parsed["errors"] == 0 and parsed["non_2xx"] == 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt install wrk)")
def test_external_level_runs_wrk_and_the_bench_client(tmp_path, tiny_backbone_dir):
    code = main(["external", "--quick", "--synthetic-texts", "--backbone", str(tiny_backbone_dir), "--tasks", "4",
                 "--concurrency", "4", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "external-quick.json").read_text())
    (pair,) = result["rounds"]
    assert pair["wrk"]["requests"] > 0 and pair["wrk"]["non_2xx"] == 0 and pair["wrk"]["errors"] == 0
    assert pair["ours"]["statuses"] == {"200": pair["ours"]["requests"]}
    assert result["summary"]["wrk_over_ours_inputs_per_s"] > 0
    assert "wrk" in (tmp_path / "external-quick.md").read_text()
