"""Derived figures of a benchmark result: prefix-server's ratios to each baseline, the task-count
scaling, the open-loop crossing point, and every issue-5 target with its measured value.

Ratios only ever compare runs of the same result file, i.e. measured in one run of the command; with
several rounds, a throughput ratio is the median of the per-round ratios (see throughput_ratio).
"""

from __future__ import annotations

import itertools
import math
import statistics

from benchmarks.stats import ratio

PS = "prefix-server"


def _index(runs: list[dict]) -> dict[tuple[int, int, str], dict]:
    return {(r["tasks"], r["inputs_per_request"], r["mode"]): r for r in runs}


def _p99(run: dict | None) -> float | None:
    return (run or {}).get("latency", {}).get("p99_ms") if run else None


def _limit_for(index: dict, tasks: int, ipr: int) -> dict | None:
    """The limit measured with this configuration (HTTP level), else the one of any task count."""
    return index.get((tasks, ipr, "limit")) or index.get((0, ipr, "limit"))


def throughput_ratio(run: dict | None, other: dict | None) -> tuple[float | None, list[float] | None]:
    """run's inputs/s over other's: the median of the per-round ratios when both ran the same rounds
    (each round's pair was measured minutes apart at most, so a drift in load cancels), else pooled.
    Also returns the per-round ratios."""
    if not run or not other:
        return None, None
    mine, theirs = run.get("rounds_inputs_per_s") or [], other.get("rounds_inputs_per_s") or []
    if len(mine) >= 2 and len(mine) == len(theirs) and all(theirs):
        per_round = [round(a / b, 3) for a, b in zip(mine, theirs)]
        return round(statistics.median(per_round), 3), per_round
    return ratio(run["inputs_per_s"], other["inputs_per_s"]), None


def ratios(runs: list[dict]) -> list[dict]:
    """Per configuration: prefix-server's throughput over each baseline's, and its p99 over per-task's."""
    index = _index(runs)
    out = []
    for (tasks, ipr, mode), run in index.items():
        if mode != PS:
            continue
        per_task = index.get((tasks, ipr, "per-task"))
        row = {"tasks": tasks, "inputs_per_request": ipr}
        for name, other in (("limit", _limit_for(index, tasks, ipr)), ("per_task", per_task),
                            ("seed", index.get((tasks, ipr, "seed"))), ("in_process", index.get((tasks, ipr, "in-process")))):
            row[f"vs_{name}"], row[f"vs_{name}_rounds"] = throughput_ratio(run, other)
        row["p99_vs_per_task"] = ratio(_p99(run), _p99(per_task))
        out.append(row)
    return out


def decomposition(runs: list[dict]) -> list[dict]:
    """prefix-server over the limit as a product of three measured steps (engine level, when the
    replay modes ran): arrival-order layout, prefixes, serving."""
    index, out = _index(runs), []
    for (tasks, ipr, mode), run in index.items():
        if mode != PS or (tasks, ipr, "replay") not in index or (tasks, ipr, "replay-bare") not in index:
            continue
        limit, bare, replay = index.get((tasks, ipr, "limit")), index[(tasks, ipr, "replay-bare")], index[(tasks, ipr, "replay")]
        out.append({
            "tasks": tasks, "inputs_per_request": ipr,
            "layout": throughput_ratio(bare, limit)[0], "prefixes": throughput_ratio(replay, bare)[0],
            "serving": throughput_ratio(run, replay)[0], "total": throughput_ratio(run, limit)[0],
        })
    return out


def scaling(runs: list[dict], mode: str = PS) -> list[dict]:
    """Throughput and p99 of N tasks over 1 task, per inputs-per-request."""
    index = _index(runs)
    out = []
    for (tasks, ipr, m), run in sorted(index.items()):
        one = index.get((1, ipr, mode))
        if m == mode and one is not None:
            value, per_round = throughput_ratio(run, one)
            out.append({
                "tasks": tasks, "inputs_per_request": ipr, "throughput_vs_1_task": value,
                "throughput_vs_1_task_rounds": per_round, "p99_vs_1_task": ratio(_p99(run), _p99(one)),
            })
    return out


def _interpolate_log(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x on the piecewise log-linear curve through (x, y) points sorted by x (clamped at the ends)."""
    if not points:
        return None
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            t = (x - x0) / (x1 - x0) if x1 > x0 else 0.0
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    return None  # beyond the last measured rate (that mode saturated earlier)


def open_loop_summary(open_runs: list[dict], budget_ms: float) -> dict:
    curves: dict[str, list[dict]] = {}
    for run in open_runs:
        curves.setdefault(run["mode"], []).append(run)
    sustainable = {}
    for mode, points in curves.items():
        ok = [p for p in points if _p99(p) is not None and _p99(p) <= budget_ms and not p.get("saturated")]
        sustainable[mode] = max((p["inputs_per_s"] for p in ok), default=None)
    out = {"budget_ms": budget_ms, "sustainable_inputs_per_s": sustainable,
           "sustainable_ratio": ratio(sustainable.get(PS), sustainable.get("per-task"))}
    per_task = sorted((p["rate_rps"], _p99(p)) for p in curves.get("per-task", []) if _p99(p))
    prefix_server = sorted((p["rate_rps"], _p99(p)) for p in curves.get(PS, []) if _p99(p))
    crossing = next((i for i, (_, p99) in enumerate(per_task) if p99 >= budget_ms), None)
    if crossing is None:
        out["crossing"] = None  # per-task stayed under the budget at every rate measured
        return out
    rate, per_task_p99 = per_task[crossing]  # over the budget already at the lowest rate: read there
    if crossing > 0:
        (r0, p0), (r1, p1) = per_task[crossing - 1], per_task[crossing]
        rate = r0 + (r1 - r0) * (math.log(budget_ms) - math.log(p0)) / (math.log(p1) - math.log(p0))
        per_task_p99 = budget_ms
    ps_p99 = _interpolate_log(prefix_server, rate)
    out["crossing"] = {
        "rate_rps": round(rate, 2), "interpolated": crossing > 0, "per_task_p99_ms": round(per_task_p99, 2),
        "prefix_server_p99_ms": round(ps_p99, 2) if ps_p99 else None,
        "p99_ratio": round(per_task_p99 / ps_p99, 2) if ps_p99 else None,
    }
    return out


def _target(name: str, config: str, measured, goal: float, higher_is_better: bool = True, note: str = "") -> dict:
    met = None if measured is None else (measured >= goal if higher_is_better else measured <= goal)
    sign = ">=" if higher_is_better else "<="
    return {"target": name, "config": config, "measured": measured, "goal": f"{sign} {goal:g}", "met": met, "note": note}


def engine_targets(runs: list[dict], level: str = "engine") -> list[dict]:
    out = []
    for row in scaling(runs):
        if row["tasks"] == 64:
            out.append(_target("64 tasks vs 1 task, throughput (same concurrency)", f"{level}, {row['inputs_per_request']} input(s)/request",
                               row["throughput_vs_1_task"], 0.95, note=f"p99 ratio {row['p99_vs_1_task']}"))
    goal = 0.9 if level == "engine" else 0.8
    for row in ratios(runs):
        if level == "engine" or row["inputs_per_request"] == 1:
            where = f"{level}, {row['tasks']} tasks, {row['inputs_per_request']} input(s)/request"
            out.append(_target("prefix-server vs backbone-alone limit", where, row["vs_limit"], goal))
    return out


def http_targets(result: dict) -> list[dict]:
    out = engine_targets(result["runs"], level="http")
    for row in ratios(result["runs"]):
        if row["inputs_per_request"] == 1 and row["vs_seed"] is not None:
            out.append(_target("prefix-server vs the seed (one at a time), concurrent single-input load",
                               f"http, {row['tasks']} tasks", row["vs_seed"], 1.5))
    if result.get("open_loop"):
        summary = open_loop_summary(result["open_loop"], result["config"]["p99_budget_ms"])
        crossing = summary["crossing"] or {}
        tasks = result["config"]["open_loop_tasks"]
        note = "per-task never reached the budget: extend --rates" if not crossing else (
            "" if crossing["interpolated"] else "per-task was over the budget at the lowest rate: add lower --rates")
        out.append(_target("open loop: p99 at the load where per-task reaches the budget, per-task / prefix-server",
                           f"http, {tasks} tasks, rate {crossing.get('rate_rps')} req/s", crossing.get("p99_ratio"), 2.0,
                           note=note))
        out.append(_target("open loop: sustainable throughput at p99 <= budget, prefix-server / per-task",
                           f"http, {tasks} tasks", summary["sustainable_ratio"], 1.6,
                           note=f"{summary['sustainable_inputs_per_s']} inputs/s, resolution = the rate grid"))
    return out


def memory_targets(result: dict) -> list[dict]:
    out = []
    for row in result["comparison"][1:]:
        if row["tasks"] == max(r["tasks"] for r in result["comparison"][1:]):
            out.append(_target(f"RSS with {row['tasks']} tasks resident <= backbone RSS + 1.2 x prefix bytes",
                               "memory", row["prefix_server_rss_mb"], row["budget_mb"], higher_is_better=False,
                               note=f"backbone {row['backbone_rss_mb']} MiB + 1.2 x {row['prefix_mb']} MiB"))
    return out


def precision_targets(result: dict) -> list[dict]:
    """Per reduced-precision dtype: is it within the stated tolerance of float32 on every demo task?"""
    tolerance, out = result["tolerance"], []
    for dtype in sorted({row["dtype"] for row in result["tasks"]} - {"float32"}):
        rows = [row for row in result["tasks"] if row["dtype"] == dtype]
        agreement = min(row["label_agreement"] for row in rows)
        accuracy_delta = max(abs(row["accuracy"] - row["accuracy_float32"]) for row in rows)
        max_diff = max(row["max_abs_diff"] for row in rows)
        config = f"{dtype}, demo tasks"
        out.append(_target(f"{dtype}: predicted label equals float32's (worst task)", config, agreement, tolerance["label_agreement"]))
        out.append(_target(f"{dtype}: accuracy change from float32 (worst task)", config, round(accuracy_delta, 4),
                           tolerance["accuracy_delta"], higher_is_better=False))
        out.append(_target(f"{dtype}: largest score difference from float32", config, round(max_diff, 4),
                           tolerance["max_abs_diff"], higher_is_better=False,
                           note=f"{result['throughput'][dtype]['vs_float32']}x float32's throughput"))
    return out
