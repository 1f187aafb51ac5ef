"""Writes a benchmark result as JSON and as Markdown tables, with the conditions it was measured in:
the machine (CPU model, cores, load), library versions, the date and the exact command.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

from benchmarks import analysis

PADDING_NOTE = (
    "Padding describes each batch as formed: the *padded layout* columns are what a [B, max S] forward "
    "would waste (the seed's layout; a measure of how mixed the batch is); *attention padding (packed)* "
    "is the share of the query-key pairs the packed engine's attention computes that are padding (its "
    "dense layers run on real tokens only; rows of close lengths share one attention call, "
    "server/engine/packing.py). Over HTTP the server counts real tokens only, so the padding columns "
    "come from the engine level. Forward busy: the share of the wall time spent inside forward passes."
)


def _git_revision() -> str:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "server", "training"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes under server/" if dirty.stdout.strip() else "")


def environment(command: list[str] | None = None) -> dict:
    import tokenizers
    import torch
    import transformers

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": _git_revision(),
        "command": shlex.join(command if command is not None else sys.argv),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp default, active spin)"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def analyse(result: dict) -> dict:
    """Adds the derived figures (ratios, scaling, targets) to a result, in place; returns it."""
    level = result["level"]
    if level in ("engine", "http"):
        result["ratios"] = analysis.ratios(result["runs"])
        result["scaling"] = analysis.scaling(result["runs"])
        result["decomposition"] = analysis.decomposition(result["runs"])
        result["targets"] = analysis.engine_targets(result["runs"]) if level == "engine" else analysis.http_targets(result)
    if level == "http" and result.get("open_loop"):
        budget = result["config"]["p99_budget_ms"]
        result["open_loop_summary"] = analysis.open_loop_summary(result["open_loop"], budget)
        # The same curves read at looser budgets: on a loaded machine the floor under p99 can be near the budget.
        result["open_loop_summary_looser"] = [analysis.open_loop_summary(result["open_loop"], b) for b in (2 * budget, 4 * budget)]
    if level == "memory":
        result["targets"] = analysis.memory_targets(result)
    if level == "precision":
        result["targets"] = analysis.precision_targets(result)
    return result


def write(result: dict, out_dir: str | Path, name: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=1))
    md_path.write_text(render(result))
    return json_path, md_path


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _meta(result: dict) -> str:
    env = result.get("environment", {})
    lines = [f"- {key}: `{value}`" for key, value in env.items()]
    if "texts" in result:
        lines.append(f"- texts: {result['texts']['origin']} {result['texts']['sizes']}")
    if "backbone" in result:
        lines.append(f"- backbone: {result['backbone']}")
    if "bench_process_memory" in result:
        lines.append(f"- bench process memory (all modes, all task sets, the seed model): {result['bench_process_memory']}")
    return "\n".join(lines)


def _histogram(batch: dict | None) -> str:
    if not batch or not batch.get("histogram"):
        return "—"
    return " ".join(f"≤{k}:{v}" for k, v in batch["histogram"].items())


def _runs_table(runs: list[dict]) -> str:
    http = any("server_cpu_us_per_request" in r for r in runs)
    rows = []
    for r in runs:
        lat, batch = r.get("latency") or {}, r.get("batch_size") or {}
        memory = r.get("server_memory") or r.get("process_memory") or {}
        rows.append([
            str(r["tasks"] or "—"), str(r["inputs_per_request"]), r["mode"], r["inputs_per_s"], lat.get("p50_ms"),
            lat.get("p95_ms"), lat.get("p99_ms"), _pct(r.get("padding_fraction")), _pct(r.get("key_padding_fraction")),
            _pct(r.get("packed_key_padding_fraction")),
            batch.get("mean"), _histogram(batch), r.get("tasks_per_forward_mean"), _busy(r), memory.get("peak_rss_mb"),
        ] + ([r.get("server_cpu_us_per_request"), r.get("engine_cpu_us_per_request")] if http else []))
    header = ["tasks", "inputs/req", "mode", "inputs/s", "p50 ms", "p95 ms", "p99 ms", "padding (padded layout)",
              "key padding (padded layout)", "attention padding (packed)",
              "mean batch", "batch sizes", "tasks/forward", "forward busy", "peak RSS MiB"]
    if http:
        header += ["server CPU us/request", "engine process CPU us/request"]
    return _table(header, rows)


def _busy(run: dict) -> str:
    """The share of the run's wall time spent inside forward passes."""
    if not run.get("compute_s") or not run.get("wall_s"):
        return "—"
    # Over HTTP the counters are read just before the window opens, so a pass may straddle it: cap at 100%.
    return _pct(min(1.0, run["compute_s"] / run["wall_s"]))


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _ratio_table(rows: list[dict]) -> str:
    return _table(
        ["tasks", "inputs/req", "vs limit", "vs per-task", "vs seed", "p99 vs per-task", "engine process vs in-process"],
        [[str(r["tasks"]), str(r["inputs_per_request"]), _x(r["vs_limit"], r.get("vs_limit_rounds")),
          _x(r["vs_per_task"], r.get("vs_per_task_rounds")), _x(r["vs_seed"], r.get("vs_seed_rounds")),
          _x(r["p99_vs_per_task"]), _x(r.get("vs_in_process"), r.get("vs_in_process_rounds"))] for r in rows],
    )


def _x(value, rounds: list[float] | None = None) -> str:
    if value is None:
        return "—"
    spread = f" ({min(rounds):.2f}–{max(rounds):.2f})" if rounds else ""
    return f"{value:.2f}x{spread}"


def _targets_table(rows: list[dict]) -> str:
    marks = {True: "yes", False: "**no**", None: "—"}
    return _table(
        ["target", "configuration", "measured", "goal", "met", "note"],
        [[t["target"], t["config"], _fmt(t["measured"], 3), t["goal"], marks[t["met"]], t.get("note", "")] for t in rows],
    )


def render(result: dict) -> str:
    level = result["level"]
    parts = [f"# prefix-server bench: {level} level", "", _meta(result), ""]
    if level in ("engine", "http"):
        parts += ["## Throughput, latency, batches", "", _runs_table(result["runs"]), "", PADDING_NOTE, ""]
        parts += ["## prefix-server over each baseline (same texts, same run)", "", _ratio_table(result.get("ratios", [])), ""]
        if result.get("decomposition"):
            parts += ["## Where prefix-server's distance to the limit goes (throughput ratios, same run)", "", _table(
                ["tasks", "inputs/req", "arrival-order batches, no prefix / limit", "with their prefixes / without",
                 "served / replayed alone", "= prefix-server / limit"],
                [[str(d["tasks"]), str(d["inputs_per_request"]), _x(d["layout"]), _x(d["prefixes"]), _x(d["serving"]),
                  _x(d["total"])] for d in result["decomposition"]]), "",
                "Each step is the median of per-round ratios: the product of the first three is close to, not exactly, the last.", ""]
        parts += ["## prefix-server, N tasks over 1 task", "", _table(
            ["tasks", "inputs/req", "throughput", "p99"],
            [[str(s["tasks"]), str(s["inputs_per_request"]), _x(s["throughput_vs_1_task"], s.get("throughput_vs_1_task_rounds")),
              _x(s["p99_vs_1_task"])] for s in result.get("scaling", [])]), "",
            "Throughput ratios: the median of the per-round ratios, (min–max over rounds), when there were several rounds.", ""]
    if level == "http" and result.get("open_loop"):
        parts += ["## Open loop (Poisson arrivals; latency from the scheduled send time)", "", _table(
            ["rate req/s", "mode", "achieved inputs/s", "p50 ms", "p99 ms", "statuses", "saturated"],
            [[r["rate_rps"], r["mode"], r["inputs_per_s"], r["latency"]["p50_ms"], r["latency"]["p99_ms"],
              json.dumps(r["statuses"]), "yes" if r.get("saturated") else ""] for r in result["open_loop"]]), ""]
        for mode, latency in (result.get("open_loop_solo_latency") or {}).items():
            parts += [f"- {mode}, one request at a time (the floor under its p99 on this machine): "
                      f"p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms over {latency['count']} requests"]
        parts += [""]
        for summary in [result.get("open_loop_summary") or {}] + result.get("open_loop_summary_looser", []):
            parts += [f"- p99 budget {summary.get('budget_ms')} ms: sustainable inputs/s {summary.get('sustainable_inputs_per_s')}, "
                      f"ratio {summary.get('sustainable_ratio')}; where per-task reaches the budget: {summary.get('crossing')}"]
        parts += [""]
    if level == "memory":
        parts += _memory_sections(result)
    if level == "precision":
        parts += _precision_sections(result)
    if level == "external":
        parts += _external_sections(result)
    if level in ("soak", "protocols"):
        from benchmarks import protocols, soak

        parts += (soak if level == "soak" else protocols).render_sections(result)
    if result.get("targets"):
        parts += ["## Targets (issue 5)", "", _targets_table(result["targets"]), ""]
    if result.get("notes"):
        parts += ["## Notes", ""] + [f"- {note}" for note in result["notes"]] + [""]
    return "\n".join(parts)


def _memory_sections(result: dict) -> list[str]:
    fit = result["comparison"][0]["fit"]
    rows = [[str(r["tasks"]), r["prefix_server_rss_mb"], r["prefix_server_serving_rss_mb"], r["backbone_rss_mb"],
             r["prefix_mb"], r["budget_mb"], r["separate_models_rss_mb"] if r["separate_models_rss_mb"] else None,
             "extrapolated" if r["separate_models_extrapolated"] else "measured", _x(r["separate_over_prefix_server"])]
            for r in result["comparison"][1:]]
    copies = [[str(c["copies"]), c["rss_mb"], c["peak_rss_mb"]] for c in result["copies"]]
    return [
        f"Idle process (python, torch, server imported): {result['idle']['rss_mb']} MiB.", "",
        "## prefix-server: one backbone, k tasks resident", "", _table(
            ["tasks", "RSS MiB", "RSS after a forward", "backbone alone", "prefixes MiB", "budget MiB",
             "separate models MiB", "separate models", "separate / prefix-server"], rows), "",
        f"## Separately fine-tuned models: k backbone copies (measured), fit {fit['intercept_mb']} + "
        f"{fit['mb_per_copy']} MiB per copy, extrapolated linearly past the largest k measured", "",
        _table(["copies", "RSS MiB", "peak RSS MiB"], copies), "",
    ] + _served_section(result)


def _served_section(result: dict) -> list[str]:
    served = result.get("served") or []
    if not served:
        return []
    base = served[0]["rss_mb"]
    rows = [[str(r["tasks"]), r["rss_mb"], r["peak_rss_mb"], round(r["rss_mb"] - base, 1)] for r in served]
    return [
        "## `prefix-server serve` (API process + engine process), tasks uploaded and classified over HTTP", "",
        _table(["tasks resident", "RSS MiB (both processes)", "peak RSS MiB (sum of each process's peak)", "over 0 tasks"], rows), "",
    ]


def _precision_sections(result: dict) -> list[str]:
    rows = [[r["dtype"], r["task"], str(r["rows"]), f"{100 * r['accuracy']:.2f}", f"{100 * r['accuracy_float32']:.2f}",
             f"{100 * r['label_agreement']:.2f}%", f"{r['max_abs_diff']:.2e}", f"{r['mean_abs_diff']:.2e}"] for r in result["tasks"]]
    speed = [[name, s["inputs_per_s"], _x(s["vs_float32"])] for name, s in result["throughput"].items()]
    return [
        "## Scores against float32 (the demo prefixes on their eval sets, mixed batches)", "", _table(
            ["dtype", "task", "rows", "accuracy %", "float32 accuracy %", "same label as float32", "max |score diff|",
             "mean |score diff|"], rows), "",
        "## Engine throughput on the same batches (dtypes interleaved; median of rounds)", "",
        _table(["dtype", "inputs/s", "vs float32"], speed), "",
    ]


def _external_sections(result: dict) -> list[str]:
    config, rows = result["config"], []
    for index, pair in enumerate(result["rounds"], 1):
        for key in ("wrk", "ours"):
            r = pair[key]
            rows.append([str(index), r["tool"], r["inputs_per_s"], r["p50_ms"], r["p99_ms"], r["mean_ms"], str(r["requests"]),
                         str(r.get("non_2xx", "")) or json.dumps(r.get("statuses", {}))])
    s = result["summary"]
    return [
        f"## wrk ({result['wrk_version']}) and the bench client against the same prefix-server", "",
        f"{config['tasks']} tasks, {config['inputs_per_request']} input(s) per request, {config['concurrency']} requests in flight, "
        f"{config['seconds']:g} s per run, the tools alternating.", "",
        _table(["round", "load generator", "inputs/s", "p50 ms", "p99 ms", "mean ms", "requests", "non-200"], rows), "",
        f"wrk over the bench client (median of rounds): throughput {_x(s['wrk_over_ours_inputs_per_s'])}, "
        f"p50 {_x(s['wrk_over_ours_p50_ms'])}, p99 {_x(s['wrk_over_ours_p99_ms'])}.", "",
    ]
