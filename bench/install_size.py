"""What each install profile costs: `pip install embedpipe` (the core) against
`pip install 'embedpipe[pipeline]'`, each into a fresh virtual environment.

The package's wheel is built once from the checkout; each profile is installed from it with
constraints.txt (the versions CI uses) from the indexes pip is configured with, its cache as
it is (warm here: pyspark's wheel, built from its source package, is cached). Measured: the
wall time of `pip install` (bytecode compiled, pip's default), the disk use of site-packages
(as `du`), the number of distributions, and the largest ones. Prints a table and writes
bench/results/install_size.json.

Usage: python bench/install_size.py [--profiles core pipeline] [--out FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_PACKAGES = {"torch", "pyspark", "prefect", "numba", "pandas", "matplotlib", "scipy"}
# Prints each installed distribution's size in bytes, as JSON, inside the measured venv.
SIZES = """
import json, os
from importlib import metadata
sizes = {}
for dist in metadata.distributions():
    total = 0
    for f in dist.files or []:
        p = dist.locate_file(f)
        if os.path.isfile(p):
            total += os.stat(p).st_blocks * 512
    sizes[dist.metadata["Name"]] = total
print(json.dumps(sizes))
"""


def run(command: list[str], **kwargs: Any) -> str:
    """Run a command; its stdout (stderr shown and an error raised when it fails)."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(command)}")
    return done.stdout


def build_wheel(out: Path) -> Path:
    """The package's wheel, built from a copy of the checkout's sources."""
    source = out / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    run(["cp", "-r", str(ROOT / "src"), str(source / "src")])
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out), str(source)])  # fmt: skip
    (wheel,) = out.glob("embedpipe-*.whl")
    return wheel


def disk_use(path: Path) -> int:
    """Bytes of disk under `path`, as `du` counts them (allocated blocks)."""
    total = 0
    for top, _, names in os.walk(path):
        for name in names:
            total += os.lstat(os.path.join(top, name)).st_blocks * 512
    return total


def measure(profile: str, wheel: Path, where: Path) -> dict[str, Any]:
    """Install `profile` into a new venv under `where`; what it cost."""
    venv = where / profile
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    spec = str(wheel) if profile == "core" else f"embedpipe[{profile}] @ {wheel.as_uri()}"
    started = time.monotonic()
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
         "-c", str(ROOT / "constraints.txt"), spec])  # fmt: skip
    seconds = time.monotonic() - started
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    sizes = json.loads(run([python, "-c", SIZES]))
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
    return {
        "install_seconds": round(seconds, 1),
        "site_packages_bytes": disk_use(Path(purelib.strip())),
        "distributions": len(sizes),
        "largest_mb": {name: round(size / 2**20, 1) for name, size in largest},
        "pipeline_packages": sorted(n for n in sizes if n.lower() in PIPELINE_PACKAGES),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """The measurements as a text table."""
    lines = [f"{'profile':10s} {'site-packages':>14s} {'install':>9s} {'dists':>6s}  largest"]
    for profile, r in results.items():
        top = ", ".join(f"{n} {mb:.0f}" for n, mb in list(r["largest_mb"].items())[:4])
        lines.append(
            f"{profile:10s} {r['site_packages_bytes'] / 2**20:>11.0f} MB "
            f"{r['install_seconds']:>7.1f} s {r['distributions']:>6d}  {top} (MB)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["core", "pipeline"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/install_size.json")
    parser.add_argument("--keep", type=Path, help="build the venvs here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="install-size-") as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        wheel = build_wheel(where / "dist")
        results = {p: measure(p, wheel, where) for p in args.profiles}
    print(table(results))
    record = {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "pip": run([sys.executable, "-m", "pip", "--version"]).split()[1],
        "constraints": "constraints.txt",
        "note": "fresh venv per profile; pip cache warm; bytecode compiled; du of site-packages",
        "profiles": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
