"""Where the time of embedpipe's corpus stages goes, from a Spark event log.

Reads a Spark event log (written by `bench/corpus_stages.py --event-log DIR`) and prints,
per Spark stage, grouped by the embedpipe stage whose time window holds it (from the
windows corpus_stages.py records): wall time, task run and CPU time, JVM GC, rows and
bytes in and out of shuffles, spills, and the Python (mapInArrow) metrics Spark SQL keeps.

Usage: python bench/spark_profile.py EVENT_LOG_FILE_OR_DIR [--windows RAW_JSON --size 10m]
(event logs must be uncompressed; corpus_stages.py --event-log writes them so).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

# SQL metrics (accumulables) worth showing, by name as Spark reports them.
SQL_METRICS = (
    "number of output rows",
    "data sent to Python workers",
    "data returned from Python workers",
    "time to execute python code",
    "spill size",
    "peak memory",
    "sort time",
    "time in aggregation build",
    "number of written files",
    "written output",
)


def load_events(path: Path) -> list[dict[str, Any]]:
    """Events of an uncompressed log file, or of the newest application in a directory."""
    if path.is_dir():
        apps = sorted(
            (p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "app"))),
            key=lambda p: p.stat().st_mtime,
        )
        if not apps:
            raise SystemExit(f"no event log in {path}")
        path = apps[-1]
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stages_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per completed Spark stage, with its job and the metrics summed over tasks."""
    job_of_stage: dict[int, int] = {}
    job_time: dict[int, float] = {}
    tasks: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    out = []
    for e in events:
        kind = e["Event"]
        if kind == "SparkListenerJobStart":
            for sid in e["Stage IDs"]:
                job_of_stage[sid] = e["Job ID"]
            job_time[e["Job ID"]] = e["Submission Time"] / 1000
        elif kind == "SparkListenerTaskEnd":
            m = e.get("Task Metrics") or {}
            t = tasks[e["Stage ID"]]
            t["tasks"] += 1
            t["run_s"] += m.get("Executor Run Time", 0) / 1000
            t["cpu_s"] += m.get("Executor CPU Time", 0) / 1e9
            t["gc_s"] += m.get("JVM GC Time", 0) / 1000
            t["deser_s"] += m.get("Executor Deserialize Time", 0) / 1000
            sr = m.get("Shuffle Read Metrics") or {}
            sw = m.get("Shuffle Write Metrics") or {}
            t["shuffle_read_rows"] += sr.get("Total Records Read", 0)
            t["shuffle_read_mb"] += (
                sr.get("Remote Bytes Read", 0) + sr.get("Local Bytes Read", 0)
            ) / 2**20
            t["shuffle_write_rows"] += sw.get("Shuffle Records Written", 0)
            t["shuffle_write_mb"] += sw.get("Shuffle Bytes Written", 0) / 2**20
            t["shuffle_write_s"] += sw.get("Shuffle Write Time", 0) / 1e9
            t["spill_disk_mb"] += m.get("Disk Bytes Spilled", 0) / 2**20
            t["spill_mem_mb"] += m.get("Memory Bytes Spilled", 0) / 2**20
            im = m.get("Input Metrics") or {}
            om = m.get("Output Metrics") or {}
            t["input_rows"] += im.get("Records Read", 0)
            t["output_rows"] += om.get("Records Written", 0)
        elif kind == "SparkListenerStageCompleted":
            info = e["Stage Info"]
            sid = info["Stage ID"]
            submitted = info.get("Submission Time", 0) / 1000
            completed = info.get("Completion Time", 0) / 1000
            metrics = {
                a["Name"]: a.get("Value")
                for a in info.get("Accumulables", [])
                if a.get("Name") in SQL_METRICS
            }
            out.append(
                {
                    "stage": sid,
                    "job": job_of_stage.get(sid),
                    "name": info["Stage Name"],
                    "submitted": submitted,
                    "wall_s": round(completed - submitted, 3),
                    **{k: round(v, 3) for k, v in tasks[sid].items()},
                    "sql": metrics,
                }
            )
    return out


def assign(stages: list[dict], windows: dict[str, tuple[float, float]]) -> None:
    for s in stages:
        s["embedpipe_stage"] = next(
            (n for n, (a, b) in windows.items() if a <= s["submitted"] <= b), "?"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("event_log", type=Path)
    parser.add_argument("--windows", type=Path, help="corpus_stages.raw.json")
    parser.add_argument("--size", default="10m")
    parser.add_argument("--json", type=Path, help="write the per-stage records here")
    args = parser.parse_args()

    stages = stages_of(load_events(args.event_log))
    if args.windows:
        raw = json.loads(args.windows.read_text())
        run = next(r["ours"] for r in raw if r.get("size") == args.size)
        windows = {n: (s["started_at"], s["ended_at"]) for n, s in run["stages"].items()}
        assign(stages, windows)
    cols = ("wall_s", "run_s", "cpu_s", "gc_s", "shuffle_write_rows", "shuffle_write_mb",
            "shuffle_read_rows", "spill_disk_mb")  # fmt: skip
    print(f"{'ep stage':12s} {'sid':>4s} {'tasks':>5s} " + " ".join(f"{c:>12s}" for c in cols))
    by_ep: dict[str, float] = defaultdict(float)
    for s in stages:
        ep = s.get("embedpipe_stage", "")
        by_ep[ep] += s["wall_s"]
        print(
            f"{ep:12s} {s['stage']:>4d} {int(s.get('tasks', 0)):>5d} "
            + " ".join(f"{s.get(c, 0):>12,.2f}" for c in cols)
            + f"  {s['name'][:40]}"
        )
        for k, v in s["sql"].items():
            print(f"{'':24s}{k}: {v}")
    print("\nSpark stage wall time per embedpipe stage (stages of one job may overlap):")
    for ep, secs in by_ep.items():
        print(f"  {ep:12s} {secs:8.2f} s")
    if args.json:
        args.json.write_text(json.dumps(stages, indent=2))


if __name__ == "__main__":
    main()
