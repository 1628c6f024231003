"""embedpipe's corpus stages against the GloVe C tools (vocab_count, cooccur), side by side.

For each corpus size (default 1M and 10M whitespace tokens, from bench/build_corpus.py):

1. Pre-tokenise once with embedpipe's tokenizer (`tokenize_arrow`: NFKC, lower-case, runs
   of letters/marks/digits) into a space-separated copy; both sides read that same file,
   since GloVe splits on whitespace only (embedpipe's tokenizer is idempotent on it).
2. GloVe: `vocab_count -min-count 5 < tok > vocab.txt`, then
   `cooccur -vocab-file vocab.txt -window-size 10 -memory 4.0 < tok > cooccur.bin`
   (symmetric, 1/distance weights: its defaults), timed, peak RSS from wait4.
3. embedpipe, in a fresh child process per size: the Spark session start-up timed apart,
   then each stage of `embedpipe.corpus.stages` in pipeline order, timed; the driver
   JVM's and the Python driver's peak RSS (VmHWM), the Python workers' polled peak, and
   the CPU seconds of the whole process tree.
4. Sanity: same vocabulary (words and counts) at min_count 5, and the co-occurrence
   matrices compared entry by entry (mapped through the tokens).

`encode.oov=drop` by default: GloVe's cooccur skips out-of-vocabulary words so that they
take no window position, and embedpipe's `oov=drop` does the same, which makes the two
matrices comparable entry for entry (`--oov unk` times embedpipe's default instead).

"Ours" for the ratio is the path text -> vocabulary -> co-occurrences, i.e. the stages
tokenize + build_vocab + encode + cooccur (GloVe's two tools tokenise, count, look up
and count pairs); bucket has no GloVe counterpart and is reported beside it. Spark
session start-up is reported apart. Other processes' CPU use during each timed run is
recorded (`foreign_cpu_s`) so that disturbed timings can be told.

Input layouts (`--layout`): embedpipe reads the pre-tokenised text as one file (`file`), as
`--files` small files in a directory (`files`: a corpus of many documents), or gzipped in
one file (`gz`: Spark cannot split it, one task decompresses it). GloVe reads the one plain
file from stdin in every layout (its fastest input). `--prefix short` takes the short-line
corpus (bench/build_corpus.py --shape sentences: short-1m.txt, short-10m.txt).

Usage: python bench/corpus_stages.py [--glove-bin DIR] [--corpus-dir DIR] [--out DIR]
           [--sizes 1m 10m] [--prefix corpus|short] [--layout file|files|gz] [--files N]
           [--repeat N] [--wait-quiet S] [--event-log DIR] [--oov drop|unk]
To time a fixed copy of the code while src/ is being edited, copy src/ elsewhere and run
with PYTHONPATH=<copy>/src (the Spark workers inherit it); results record the source hash.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "corpus_stages.json"
OURS_PATH = ("tokenize", "build_vocab", "encode", "cooccur")
MIN_COUNT = 5
WINDOW = 10
GLOVE_MEMORY_GB = 4.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# ---------------------------------------------------------------- /proc helpers


def _stat(pid: int) -> tuple[str, int, float, float] | None:
    """(comm, ppid, own cpu s, waited-children cpu s) of a process, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    children = (int(fields[13]) + int(fields[14])) / CLK_TCK
    return comm, int(fields[1]), own, children


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB
    except OSError:
        return 0


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _all_stats() -> dict[int, tuple[str, int, float, float]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def _descendants(root: int, stats: dict[int, tuple[str, int, float, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st[1], []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _busy_seconds() -> float:
    """CPU time all processes on the machine have used (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class ForeignCpu:
    """CPU seconds used outside this process tree between enter and exit.

    The machine's total busy time (/proc/stat) less what this tree used (its live
    processes plus the children they reaped), so short-lived processes count too.
    """

    def __init__(self, root: int | None = None) -> None:
        self.root = root or os.getpid()

    def __enter__(self) -> ForeignCpu:
        self.busy, self.own = _busy_seconds(), tree_cpu_seconds(self.root)
        self.load_before = os.getloadavg()[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        busy, own = _busy_seconds() - self.busy, tree_cpu_seconds(self.root) - self.own
        self.seconds = max(0.0, busy - own)
        self.load_after = os.getloadavg()[0]


class TreeSampler(threading.Thread):
    """Polls this process's descendants: peak RSS of the JVM, of the Python workers, in all."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = os.getpid(), interval
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.peak = {"java_kb": 0, "workers_kb": 0, "tree_kb": 0, "driver_kb": 0}

    def sample(self) -> None:
        stats = _all_stats()
        java = workers = 0
        for pid in _descendants(self.root, stats):
            rss = _rss_kb(pid)
            if stats[pid][0] == "java":
                java += rss
            else:
                workers += rss
        driver = _rss_kb(self.root)
        with self.lock:
            p = self.peak
            p["java_kb"] = max(p["java_kb"], java)
            p["workers_kb"] = max(p["workers_kb"], workers)
            p["driver_kb"] = max(p["driver_kb"], driver)
            p["tree_kb"] = max(p["tree_kb"], java + workers + driver)

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def take(self) -> dict[str, int]:
        self.sample()
        with self.lock:
            peak = dict(self.peak)
        self.reset()
        return peak


class HeapPoller(threading.Thread):
    """Polls the driver JVM's heap (JMX, through the Spark session's gateway): the largest
    occupancy right after a garbage collection (the data the JVM keeps: what could grow
    with the corpus) and the largest committed heap (which the GC grows lazily towards
    -Xmx when there is more garbage, and which is most of the RSS)."""

    def __init__(self, spark: Any, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        jvm = spark.sparkContext._jvm
        factory = jvm.java.lang.management.ManagementFactory
        self.memory = factory.getMemoryMXBean()
        self.pools = [
            pool for pool in factory.getMemoryPoolMXBeans() if str(pool.getType()) == "Heap memory"
        ]
        self.max_bytes = self.memory.getHeapMemoryUsage().getMax()
        self.after_gc = self.committed = 0

    def sample(self) -> None:
        used = 0
        for pool in self.pools:
            usage = pool.getCollectionUsage()
            used += usage.getUsed() if usage is not None else 0
        self.after_gc = max(self.after_gc, used)
        self.committed = max(self.committed, self.memory.getHeapMemoryUsage().getCommitted())

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - the gateway closes at the end of the run
                return

    def take(self) -> dict[str, float]:
        self.stop_event.set()
        self.sample()
        return {
            "heap_max_mb": _mb(self.max_bytes // 1024),
            "heap_after_gc_mb": _mb(self.after_gc // 1024),
            "heap_committed_mb": _mb(self.committed // 1024),
        }


def wait_quiet(max_wait: float, cores: float = 0.3, window: float = 3.0) -> float:
    """Wait (up to max_wait s) until other processes use under `cores` CPUs over `window` s."""
    started = time.perf_counter()
    while True:
        with ForeignCpu() as foreign:
            time.sleep(window)
        busy = foreign.seconds / window
        waited = time.perf_counter() - started
        if busy < cores or waited >= max_wait:
            if waited > window + 1:
                print(
                    f"  waited {waited:.0f}s for a quiet machine (others: {busy:.2f} cores)",
                    flush=True,
                )
            return busy


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process and its live descendants, plus what their reaped children used."""
    stats = _all_stats()
    return sum(stats[p][2] + stats[p][3] for p in _descendants(root, stats) | {root} if p in stats)


# ---------------------------------------------------------------- pre-tokenising


def bench_overrides(tok: Path, workdir: Path, oov: str) -> list[str]:
    """The config overrides of every embedpipe run here (also used to pre-tokenise)."""
    return [
        f"workdir={workdir}",
        f'corpus.paths=["{tok}"]',
        f"vocab.min_count={MIN_COUNT}",
        f"cooccur.window={WINDOW}",
        "spark.driver_memory=4g",
        f"encode.oov={oov}",
    ]


def pretokenize(src: Path, dst: Path, batch_lines: int = 65536) -> dict[str, Any]:
    """Write embedpipe's tokens of every line, space-separated, one line per input line.

    Uses the same tokenizer config as the stages, so that re-tokenising this copy in the
    tokenize stage gives the same tokens (the text is already normalised and split).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from embedpipe.config import load_config
    from embedpipe.text import tokenize_arrow

    config = load_config(None, bench_overrides(dst, dst.parent, "drop")).tokenize
    started = time.perf_counter()
    lines = tokens = 0
    tmp = dst.with_suffix(".part")
    with open(src, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as out:
        while True:
            chunk = [line.rstrip("\n") for line in itertools.islice(f, batch_lines)]
            if not chunk:
                break
            toks = tokenize_arrow(pa.array(chunk, pa.string()), config)
            tokens += len(toks.values)
            lines += len(chunk)
            joined = pc.binary_join(toks, " ")
            out.write("\n".join(joined.to_pylist()) + "\n")
    tmp.rename(dst)
    return {"lines": lines, "tokens": tokens, "seconds": round(time.perf_counter() - started, 2)}


def lay_out(tok: Path, layout: str, files: int) -> Path:
    """The input embedpipe reads: `tok` itself, a directory of `files` files holding its
    lines in order (file names sort as the lines go), or a gzipped copy."""
    if layout == "file":
        return tok
    if layout == "gz":
        import gzip

        target = tok.with_name(tok.name + ".gz")
        with open(tok, "rb") as f, gzip.open(target, "wb", compresslevel=6) as out:
            shutil.copyfileobj(f, out, 1 << 24)
        return target
    target = tok.with_name(tok.stem + "-files")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    lines = tok.read_text(encoding="utf-8").splitlines(keepends=True)
    per_file = -(-len(lines) // files)
    for i in range(0, len(lines), per_file):
        (target / f"part-{i // per_file:06d}.txt").write_text("".join(lines[i : i + per_file]))
    return target


# ---------------------------------------------------------------- GloVe


def run_timed(cmd: list[str], stdin: Path, stdout: Path, stderr: Path, cwd: Path) -> dict:
    with (
        open(stdin, "rb") as fin,
        open(stdout, "wb") as fout,
        open(stderr, "wb") as ferr,
        ForeignCpu() as foreign,
    ):
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): see {stderr}")
    return {
        "seconds": round(seconds, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "foreign_cpu_s": round(foreign.seconds, 2),
        "loadavg": [round(foreign.load_before, 2), round(foreign.load_after, 2)],
    }


def run_glove(glove_bin: Path, tok: Path, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    vocab, matrix = out / "vocab.txt", out / "cooccur.bin"
    vc = run_timed(
        [str(glove_bin / "vocab_count"), "-min-count", str(MIN_COUNT), "-verbose", "2"],
        tok,
        vocab,
        out / "vocab_count.log",
        out,
    )
    co = run_timed(
        [
            str(glove_bin / "cooccur"),
            "-vocab-file",
            str(vocab),
            "-window-size",
            str(WINDOW),
            "-memory",
            str(GLOVE_MEMORY_GB),
            "-verbose",
            "2",
        ],
        tok,
        matrix,
        out / "cooccur.log",
        out,
    )
    return {
        "vocab_count": vc,
        "cooccur": co,
        "seconds": round(vc["seconds"] + co["seconds"], 3),
        "vocab_words": sum(1 for _ in open(vocab, encoding="utf-8", errors="replace")),
        "cooccur_entries": matrix.stat().st_size // 16,  # CREC: int32, int32, float64
    }


# ---------------------------------------------------------------- embedpipe (child process)


def ours_child(tok: Path, workdir: Path, oov: str, event_log: str | None) -> dict[str, Any]:
    """Runs in its own process so that peaks (VmHWM) and the JVM belong to this size alone."""
    sampler = TreeSampler()
    sampler.start()
    from embedpipe.config import load_config
    from embedpipe.corpus.registry import STAGES
    from embedpipe.corpus.spark.session import get_spark

    if workdir.exists():
        shutil.rmtree(workdir)
    overrides = bench_overrides(tok, workdir, oov)
    if event_log:
        Path(event_log).mkdir(parents=True, exist_ok=True)
        conf = {
            "spark.eventLog.enabled": "true",
            "spark.eventLog.dir": f"file://{event_log}",
            "spark.eventLog.compress": "false",
            "spark.eventLog.rolling.enabled": "false",
        }
        overrides.append(f"spark.conf={json.dumps(conf)}")
    config = load_config(None, overrides)

    import embedpipe

    result: dict[str, Any] = {
        "config": overrides,
        "stages": {},
        "event_log": event_log,
        "embedpipe_path": str(Path(embedpipe.__file__).parent),
    }
    sampler.take()
    with ForeignCpu() as foreign:
        started = time.perf_counter()
        spark = get_spark(config.spark, app_name="bench-corpus-stages")
        spark.range(1).count()  # the first job starts the executor side too
        result["session_jvm_start_s"] = round(time.perf_counter() - started, 3)
        started_workers = time.perf_counter()
        start_python_workers(spark)
        result["session_python_workers_start_s"] = round(time.perf_counter() - started_workers, 3)
        result["session_start_s"] = round(time.perf_counter() - started, 3)
    result["session_start_foreign_cpu_s"] = round(foreign.seconds, 2)
    result["session_peak"] = sampler.take()
    heap = HeapPoller(spark)
    heap.start()
    cpu_before = tree_cpu_seconds(os.getpid())
    for name, stage in STAGES.items():
        with ForeignCpu() as foreign:
            started_at = time.time()
            t0 = time.perf_counter()
            manifest = stage.run(spark, config)
            seconds = time.perf_counter() - t0
        if manifest.get("skipped"):
            raise RuntimeError(f"stage {name} was skipped: workdir not fresh")
        cpu_now = tree_cpu_seconds(os.getpid())
        result["stages"][name] = {
            "seconds": round(seconds, 3),
            "cpu_s": round(cpu_now - cpu_before, 2),
            "foreign_cpu_s": round(foreign.seconds, 2),
            "loadavg": [round(foreign.load_before, 2), round(foreign.load_after, 2)],
            "peak_kb": sampler.take(),
            "counts": manifest["counts"],
            "started_at": started_at,
            "ended_at": time.time(),
        }
        result["code_version"] = manifest.get("code_version")
        cpu_before = cpu_now
        print(f"    {name:12s} {seconds:8.2f} s", file=sys.stderr, flush=True)
    stats = _all_stats()
    java = [p for p in _descendants(os.getpid(), stats) if stats[p][0] == "java"]
    result["driver_jvm_heap"] = heap.take()
    result["java_vmhwm_kb"] = max((_status_kb(p, "VmHWM") for p in java), default=0)
    result["driver_vmhwm_kb"] = _status_kb(os.getpid(), "VmHWM")
    result["tree_cpu_s"] = round(tree_cpu_seconds(os.getpid()), 2)
    spark.stop()
    sampler.stop_event.set()
    return result


def start_python_workers(spark: Any) -> None:
    """Run one trivial Arrow job on every core, so that Spark's Python daemon and workers
    (pyspark, pyarrow, pandas imported) are up before the first stage, as the JVM is after
    the session's first job: both are the session's start-up, reported apart. The workers
    then stay for the later stages (spark.python.worker.reuse); no embedpipe module is
    imported here, the stages pay for their own imports."""
    import pyarrow as pa

    def drain(batches: Any) -> Any:
        for _ in batches:
            pass
        yield pa.RecordBatch.from_pylist([{"n": 1}])

    cores = spark.sparkContext.defaultParallelism
    spark.range(0, cores, numPartitions=cores).mapInArrow(drain, "n bigint").collect()


def child_env(bytecode_cache: Path | None) -> dict[str, str]:
    """The environment of the embedpipe run (its Spark Python workers inherit it).

    With `bytecode_cache`, Python caches compiled modules there (PYTHONPYCACHEPREFIX), as
    an ordinary install does beside the sources: on a machine with
    PYTHONDONTWRITEBYTECODE=1 and a venv installed with --no-compile, every Spark Python
    worker otherwise compiles pyspark, pyarrow, pandas and numba from source again
    (measured: 2-4 s of CPU per process, in each stage's first task).
    """
    env = dict(os.environ)
    if bytecode_cache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(bytecode_cache)
    return env


def run_ours(
    tok: Path, workdir: Path, oov: str, event_log: str | None, bytecode_cache: Path | None
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--_child", str(tok), str(workdir), oov, event_log or ""]
    with ForeignCpu() as foreign:
        started = time.perf_counter()
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            text=True,
            cwd=workdir.parent,
            env=child_env(bytecode_cache),
        )
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"embedpipe child failed ({proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(wall, 2)
    result["process_foreign_cpu_s"] = round(foreign.seconds, 2)
    return result


# ---------------------------------------------------------------- sanity checks


def compare(glove_out: Path, workdir: Path) -> dict[str, Any]:
    """Vocabulary (words, counts) and matrix (entries, weights) of both, through the tokens."""
    import pyarrow.parquet as pq

    from embedpipe import schemas as S
    from embedpipe.workdir import Workdir

    wd = Workdir(str(workdir))
    vocab = pq.read_table(wd.table_path("vocab")).sort_by(S.ID)
    ours_tokens = vocab.column(S.TOKEN).to_pylist()
    ours_counts = dict(zip(ours_tokens, vocab.column(S.COUNT).to_pylist(), strict=True))
    for special in S.SPECIAL_TOKENS:
        ours_counts.pop(special, None)
    glove_counts: dict[str, int] = {}
    glove_tokens: list[str] = []
    with open(glove_out / "vocab.txt", encoding="utf-8") as f:
        for line in f:
            word, count = line.rstrip("\n").rsplit(" ", 1)
            glove_counts[word] = int(count)
            glove_tokens.append(word)
    report: dict[str, Any] = {
        "vocab_words_ours": len(ours_counts),
        "vocab_words_glove": len(glove_counts),
        "vocab_same_words_and_counts": ours_counts == glove_counts,
    }

    # GloVe ids are 1-based ranks in vocab.txt; map them to our ids through the token.
    ours_id = {t: i for i, t in enumerate(ours_tokens)}
    glove_to_ours = np.array([-1] + [ours_id.get(t, -1) for t in glove_tokens], dtype=np.int64)
    rec = np.dtype([("w1", "<i4"), ("w2", "<i4"), ("val", "<f8")])
    g = np.fromfile(glove_out / "cooccur.bin", dtype=rec)
    g_key = (glove_to_ours[g["w1"]] << 32) | glove_to_ours[g["w2"]]
    g_val = g["val"]
    del g
    order = np.argsort(g_key, kind="stable")
    g_key, g_val = g_key[order], g_val[order]
    table = pq.read_table(wd.table_path("cooccur"), columns=[S.ROW, S.COL, S.WEIGHT])
    o_key = (table.column(S.ROW).to_numpy().astype(np.int64) << 32) | table.column(
        S.COL
    ).to_numpy().astype(np.int64)
    o_val = table.column(S.WEIGHT).to_numpy().astype(np.float64)
    del table
    order = np.argsort(o_key, kind="stable")
    o_key, o_val = o_key[order], o_val[order]
    report.update(
        {
            "cooccur_entries_ours": int(len(o_key)),
            "cooccur_entries_glove": int(len(g_key)),
            "cooccur_weight_sum_ours": float(o_val.sum()),
            "cooccur_weight_sum_glove": float(g_val.sum()),
        }
    )
    if len(o_key) == len(g_key) and np.array_equal(o_key, g_key):
        rel = np.abs(o_val - g_val) / np.maximum(np.abs(g_val), 1e-12)
        report["cooccur_same_entries"] = True
        report["cooccur_max_rel_weight_diff"] = float(rel.max())
    else:
        common = np.intersect1d(o_key, g_key, assume_unique=True)
        report["cooccur_same_entries"] = False
        report["cooccur_common_entries"] = int(len(common))
    return report


# ---------------------------------------------------------------- report


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def _span(values: Any) -> list[float]:
    values = list(values)
    return [min(values), max(values)] if values else []


def summarise(size: str, tok_info: dict, glove: dict, ours: dict, sanity: dict) -> dict:
    tokens = ours["stages"]["tokenize"]["counts"]["tokens"]
    stages = {
        name: {
            "seconds": s["seconds"],
            "tokens_per_s": round(tokens / s["seconds"]) if s["seconds"] else None,
            "cpu_s": s["cpu_s"],
            "foreign_cpu_s": s["foreign_cpu_s"],
            "peak_java_mb": _mb(s["peak_kb"]["java_kb"]),
            "peak_workers_mb": _mb(s["peak_kb"]["workers_kb"]),
        }
        for name, s in ours["stages"].items()
    }
    ours_path_s = sum(ours["stages"][n]["seconds"] for n in OURS_PATH)
    all_s = sum(s["seconds"] for s in ours["stages"].values())
    return {
        "size": size,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokens": tokens,
        "lines": tok_info["lines"],
        "pretokenize_s": tok_info.get("seconds"),
        "ours": {
            "session_start_s": ours["session_start_s"],
            "session_jvm_start_s": ours.get("session_jvm_start_s"),
            "session_python_workers_start_s": ours.get("session_python_workers_start_s"),
            "stages": stages,
            "path_s": round(ours_path_s, 3),
            "path_tokens_per_s": round(tokens / ours_path_s),
            "all_stages_s": round(all_s, 3),
            "cpu_s_all_stages": round(sum(s["cpu_s"] for s in ours["stages"].values()), 2),
            "peak_driver_jvm_mb": _mb(ours["java_vmhwm_kb"]),
            "driver_jvm_heap": ours.get("driver_jvm_heap"),
            "peak_driver_python_mb": _mb(ours["driver_vmhwm_kb"]),
            "peak_python_workers_mb": _mb(
                max(s["peak_kb"]["workers_kb"] for s in ours["stages"].values())
            ),
            "peak_tree_mb": _mb(max(s["peak_kb"]["tree_kb"] for s in ours["stages"].values())),
            "process_wall_s": ours["process_wall_s"],
            "runs_path_s": ours["runs_path_s"],
            "foreign_cpu_s": round(
                sum(s["foreign_cpu_s"] for s in ours["stages"].values())
                + ours["session_start_foreign_cpu_s"],
                2,
            ),
        },
        "glove": {
            "vocab_count_s": glove["vocab_count"]["seconds"],
            "cooccur_s": glove["cooccur"]["seconds"],
            "seconds": glove["seconds"],
            "tokens_per_s": round(tokens / glove["seconds"]),
            "cpu_s": round(glove["vocab_count"]["cpu_s"] + glove["cooccur"]["cpu_s"], 2),
            "runs_s": glove["runs_s"],
            "peak_rss_mb": max(
                glove["vocab_count"]["peak_rss_mb"], glove["cooccur"]["peak_rss_mb"]
            ),
            "vocab_count_peak_rss_mb": glove["vocab_count"]["peak_rss_mb"],
            "cooccur_peak_rss_mb": glove["cooccur"]["peak_rss_mb"],
            "foreign_cpu_s": round(
                glove["vocab_count"]["foreign_cpu_s"] + glove["cooccur"]["foreign_cpu_s"], 2
            ),
        },
        "ratio_ours_path_over_glove": round(ours_path_s / glove["seconds"], 2),
        "ratio_vocab_cooccur_over_glove": round(
            (ours["stages"]["build_vocab"]["seconds"] + ours["stages"]["cooccur"]["seconds"])
            / glove["seconds"],
            2,
        ),
        "ratio_ours_all_stages_over_glove": round(all_s / glove["seconds"], 2),
        "ratio_vocab": round(
            (ours["stages"]["tokenize"]["seconds"] + ours["stages"]["build_vocab"]["seconds"])
            / glove["vocab_count"]["seconds"],
            2,
        ),
        "ratio_cooccur": round(
            (ours["stages"]["encode"]["seconds"] + ours["stages"]["cooccur"]["seconds"])
            / glove["cooccur"]["seconds"],
            2,
        ),
        "loadavg_1min": {
            "ours": _span(v for st in ours["stages"].values() for v in st["loadavg"]),
            "glove": _span(
                v for tool in ("vocab_count", "cooccur") for v in glove[tool]["loadavg"]
            ),
        },
        "sanity": sanity,
        "embedpipe_code_version": ours.get("code_version"),
        "embedpipe_path": ours.get("embedpipe_path"),
    }


def print_table(rows: list[dict]) -> None:
    sizes = [r["size"] for r in rows]
    w = 22
    head = f"{'':34s}" + "".join(f"{s + ' s':>{w // 2}s}{'tok/s':>{w // 2}s}" for s in sizes)
    print("\n" + head)
    print("-" * len(head))

    def line(label: str, secs: list[float | None], rates: list[float | None]) -> None:
        cells = "".join(
            f"{'' if s is None else f'{s:.2f}':>{w // 2}s}"
            f"{'' if r is None else f'{r / 1e3:,.0f}k':>{w // 2}s}"
            for s, r in zip(secs, rates, strict=True)
        )
        print(f"{label:34s}{cells}")

    line(
        "spark session start-up (apart)",
        [r["ours"]["session_start_s"] for r in rows],
        [None] * len(rows),
    )
    line(
        "  of which Python workers",
        [r["ours"].get("session_python_workers_start_s") for r in rows],
        [None] * len(rows),
    )
    for name in rows[0]["ours"]["stages"]:
        st = [r["ours"]["stages"][name] for r in rows]
        line(f"embedpipe {name}", [s["seconds"] for s in st], [s["tokens_per_s"] for s in st])
    line(
        "embedpipe tok+vocab+enc+cooccur",
        [r["ours"]["path_s"] for r in rows],
        [r["ours"]["path_tokens_per_s"] for r in rows],
    )
    line(
        "embedpipe all five stages",
        [r["ours"]["all_stages_s"] for r in rows],
        [r["tokens"] / r["ours"]["all_stages_s"] for r in rows],
    )
    line(
        "glove vocab_count",
        [r["glove"]["vocab_count_s"] for r in rows],
        [r["tokens"] / r["glove"]["vocab_count_s"] for r in rows],
    )
    line(
        "glove cooccur",
        [r["glove"]["cooccur_s"] for r in rows],
        [r["tokens"] / r["glove"]["cooccur_s"] for r in rows],
    )
    line(
        "glove vocab_count+cooccur",
        [r["glove"]["seconds"] for r in rows],
        [r["glove"]["tokens_per_s"] for r in rows],
    )
    print("-" * len(head))

    def kv(label: str, values: list[Any]) -> None:
        print(f"{label:34s}" + "".join(f"{str(v):>{w}s}" for v in values))

    kv("tokens (embedpipe tokenizer)", [f"{r['tokens']:,d}" for r in rows])
    kv("ratio ours path / glove", [f"{r['ratio_ours_path_over_glove']}x" for r in rows])
    kv(
        "ratio build_vocab+cooccur / glove",
        [f"{r.get('ratio_vocab_cooccur_over_glove', '-')}x" for r in rows],
    )
    kv("ratio ours all stages / glove", [f"{r['ratio_ours_all_stages_over_glove']}x" for r in rows])
    kv("ratio tokenize+vocab / vocab_count", [f"{r['ratio_vocab']}x" for r in rows])
    kv("ratio encode+cooccur / cooccur", [f"{r['ratio_cooccur']}x" for r in rows])
    kv(
        "cpu s ours (5 stages) / glove",
        [f"{r['ours']['cpu_s_all_stages']} / {r['glove']['cpu_s']}" for r in rows],
    )
    kv("peak driver JVM RSS MB", [r["ours"]["peak_driver_jvm_mb"] for r in rows])
    heaps = [r["ours"].get("driver_jvm_heap") or {} for r in rows]
    kv("driver JVM heap max (-Xmx) MB", [h.get("heap_max_mb", "-") for h in heaps])
    kv("  peak heap after GC (kept) MB", [h.get("heap_after_gc_mb", "-") for h in heaps])
    kv("  peak heap committed MB", [h.get("heap_committed_mb", "-") for h in heaps])
    kv("peak Python driver RSS MB", [r["ours"]["peak_driver_python_mb"] for r in rows])
    kv("peak Python workers RSS MB", [r["ours"]["peak_python_workers_mb"] for r in rows])
    kv("peak whole tree RSS MB", [r["ours"]["peak_tree_mb"] for r in rows])
    kv(
        "glove peak RSS MB (vc / cooccur)",
        [
            f"{r['glove']['vocab_count_peak_rss_mb']} / {r['glove']['cooccur_peak_rss_mb']}"
            for r in rows
        ],
    )
    kv(
        "vocab words ours / glove",
        [f"{r['sanity']['vocab_words_ours']} / {r['sanity']['vocab_words_glove']}" for r in rows],
    )
    kv("same words and counts", [r["sanity"]["vocab_same_words_and_counts"] for r in rows])
    kv("cooccur entries ours", [f"{r['sanity']['cooccur_entries_ours']:,d}" for r in rows])
    kv("cooccur entries glove", [f"{r['sanity']['cooccur_entries_glove']:,d}" for r in rows])
    kv(
        "same entries (max rel weight diff)",
        [
            f"{r['sanity']['cooccur_same_entries']} ({r['sanity'].get('cooccur_max_rel_weight_diff', '-'):.2g})"
            if r["sanity"]["cooccur_same_entries"]
            else f"False ({r['sanity']['cooccur_common_entries']:,d} common)"
            for r in rows
        ],
    )
    kv(
        "load average (1 min) ours / glove",
        [
            f"{'-'.join(map(str, r['loadavg_1min']['ours']))} / "
            f"{'-'.join(map(str, r['loadavg_1min']['glove']))}"
            for r in rows
        ],
    )
    kv(
        "other processes' CPU s ours/glove",
        [f"{r['ours']['foreign_cpu_s']} / {r['glove']['foreign_cpu_s']}" for r in rows],
    )


def scaling(rows: list[dict]) -> dict[str, Any]:
    by = {r["size"]: r for r in rows}
    if "1m" not in by or "10m" not in by:
        return {}
    a, b = by["1m"], by["10m"]
    out = {"tokens": round(b["tokens"] / a["tokens"], 2)}
    out["ours_path"] = round(b["ours"]["path_s"] / a["ours"]["path_s"], 2)
    out["ours_all_stages"] = round(b["ours"]["all_stages_s"] / a["ours"]["all_stages_s"], 2)
    for name in a["ours"]["stages"]:
        out[f"ours_{name}"] = round(
            b["ours"]["stages"][name]["seconds"] / a["ours"]["stages"][name]["seconds"], 2
        )
    out["glove_vocab_count"] = round(b["glove"]["vocab_count_s"] / a["glove"]["vocab_count_s"], 2)
    out["glove_cooccur"] = round(b["glove"]["cooccur_s"] / a["glove"]["cooccur_s"], 2)
    out["glove"] = round(b["glove"]["seconds"] / a["glove"]["seconds"], 2)
    out["peak_driver_jvm"] = round(
        b["ours"]["peak_driver_jvm_mb"] / a["ours"]["peak_driver_jvm_mb"], 2
    )
    heap_a, heap_b = a["ours"].get("driver_jvm_heap"), b["ours"].get("driver_jvm_heap")
    if heap_a and heap_b and heap_a["heap_after_gc_mb"]:
        out["peak_driver_jvm_heap_after_gc"] = round(
            heap_b["heap_after_gc_mb"] / heap_a["heap_after_gc_mb"], 2
        )
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        tok, workdir, oov, event_log = sys.argv[2:6]
        print(json.dumps(ours_child(Path(tok), Path(workdir), oov, event_log or None)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glove-bin", type=Path, default=Path("/work/tools/glove/build"))
    parser.add_argument("--corpus-dir", type=Path, default=Path("/work/bench-data"))
    parser.add_argument("--out", type=Path, default=Path("/work/bench-data/out"))
    parser.add_argument("--sizes", nargs="+", default=["1m", "10m"])
    parser.add_argument("--prefix", default="corpus", help="corpus files PREFIX-SIZE.txt")
    parser.add_argument("--layout", choices=["file", "files", "gz"], default="file")
    parser.add_argument("--files", type=int, default=2000, help="files of the 'files' layout")
    parser.add_argument("--oov", choices=["drop", "unk"], default="drop")
    parser.add_argument("--event-log", type=Path, help="also write Spark event logs here")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--add-to",
        type=Path,
        help="an earlier OUT/corpus_stages.rows.json whose other sizes go into the results too",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the fastest is kept")
    parser.add_argument(
        "--bytecode-cache",
        type=Path,
        help="where embedpipe's processes cache compiled Python modules (default OUT/pycache; "
        "filled by a first, untimed run when empty); 'none': the environment as it is",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=300,
        help="before each timed run, wait up to this many seconds for other processes to idle",
    )
    args = parser.parse_args()

    cache = None if str(args.bytecode_cache) == "none" else args.bytecode_cache
    if cache is None and args.bytecode_cache is None:
        cache = args.out / "pycache"
    if cache is not None and not cache.exists() and args.sizes:
        # Fill the cache with one untimed run on the smallest corpus (not kept).
        corpus = args.corpus_dir / f"{args.prefix}-{args.sizes[0]}.txt"
        warm = args.out / "warm-up"
        warm.mkdir(parents=True, exist_ok=True)
        print(f"filling the bytecode cache {cache} (untimed run)", flush=True)
        pretokenize(corpus, warm / "corpus.tok.txt")
        run_ours(warm / "corpus.tok.txt", warm / "embedpipe", args.oov, None, cache)
    for tool in ("vocab_count", "cooccur"):
        if not (args.glove_bin / tool).is_file():
            sys.exit(f"{args.glove_bin / tool} not found: build GloVe (make) first")
    rows = []
    for size in args.sizes:
        corpus = args.corpus_dir / f"{args.prefix}-{size}.txt"
        if not corpus.is_file():
            sys.exit(f"{corpus} not found: run bench/build_corpus.py first")
        out = args.out / size
        out.mkdir(parents=True, exist_ok=True)
        tok = out / "corpus.tok.txt"
        print(f"[{size}] pre-tokenising {corpus} -> {tok}", flush=True)
        tok_info = pretokenize(corpus, tok)
        print(f"[{size}] {tok_info}", flush=True)
        source = lay_out(tok, args.layout, args.files)
        glove_runs, ours_runs = [], []
        for i in range(args.repeat):
            print(f"[{size}] GloVe vocab_count + cooccur, run {i + 1}", flush=True)
            wait_quiet(args.wait_quiet)
            glove_runs.append(run_glove(args.glove_bin, tok, out / "glove"))
            print(f"  {glove_runs[-1]['seconds']:.2f}s", flush=True)
        for i in range(args.repeat):
            print(f"[{size}] embedpipe stages, run {i + 1}", flush=True)
            wait_quiet(args.wait_quiet)
            event_log = (
                str(args.event_log.resolve() / size / f"run{i + 1}") if args.event_log else None
            )
            ours_runs.append(run_ours(source, out / "embedpipe", args.oov, event_log, cache))
        # The fastest run of each (the least disturbed); every run's time is kept.
        glove = min(glove_runs, key=lambda g: g["seconds"])
        glove["runs_s"] = [g["seconds"] for g in glove_runs]
        ours = min(ours_runs, key=lambda o: sum(o["stages"][n]["seconds"] for n in OURS_PATH))
        ours["runs_path_s"] = [
            round(sum(o["stages"][n]["seconds"] for n in OURS_PATH), 3) for o in ours_runs
        ]
        sanity = compare(out / "glove", out / "embedpipe")
        row = summarise(size, tok_info, glove, ours, sanity)
        row["raw"] = {"size": size, "glove": glove, "ours": ours}
        rows.append(row)
        print(
            f"[{size}] ours path {row['ours']['path_s']:.1f}s vs glove {glove['seconds']:.1f}s",
            flush=True,
        )
    if args.add_to and args.add_to.is_file():
        # Keep an earlier invocation's rows for the sizes not measured now.
        done = {r["size"] for r in rows}
        rows += [r for r in json.loads(args.add_to.read_text()) if r["size"] not in done]
        rows.sort(key=lambda r: r["tokens"])
    (args.out / "corpus_stages.rows.json").write_text(json.dumps(rows, indent=2, default=str))
    print_table(rows)
    scale = scaling(rows)
    if scale:
        print("\nscaling 1M -> 10M (time ratio; tokens ratio " + f"{scale['tokens']}):")
        for k, v in scale.items():
            if k != "tokens":
                print(f"  {k:28s} {v}x")
    results = {
        "what": "embedpipe corpus stages vs GloVe vocab_count+cooccur, same pre-tokenised text",
        "min_count": MIN_COUNT,
        "window": WINDOW,
        "encode_oov": args.oov,
        "corpus": args.prefix,
        "layout": args.layout,
        "files": len(list(source.glob("*"))) if source.is_dir() else 1,  # as written
        "bytecode_cache": str(cache) if cache is not None else None,
        "glove_memory_gb": GLOVE_MEMORY_GB,
        "ours_path": list(OURS_PATH),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "python": platform.python_version(),
        },
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sizes": [{k: v for k, v in r.items() if k != "raw"} for r in rows],
        "scaling_1m_to_10m": scale,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "corpus_stages.raw.json").write_text(
        json.dumps([r["raw"] for r in rows], indent=2, default=str)
    )
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
