"""The read-only commands on the core install: with torch, pyspark, Prefect, numba,
matplotlib, scipy (and pandas, sentencepiece) impossible to import, `embedpipe --help` and
the artefact commands still work, and none of those modules gets loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BLOCKED = (
    "torch", "pyspark", "prefect", "numba", "matplotlib", "scipy", "pandas", "sentencepiece",
)  # fmt: skip

# Runs each command line of argv[2] (JSON) through `embedpipe.cli.main` in this one process,
# with a meta-path finder that refuses the modules of argv[1]; prints what each wrote and
# exited with, whether the finder does refuse, and which refused modules got loaded anyway.
CORE_ONLY = """
import contextlib, io, json, sys

BLOCKED = set(sys.argv[1].split(","))


class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (core install)", name=name)
        return None


sys.meta_path.insert(0, Blocked())
from embedpipe.cli import main

runs = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code
    runs.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
try:
    import torch
    refused = False
except ModuleNotFoundError:
    refused = True
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
print(json.dumps({"runs": runs, "refused": refused, "loaded": loaded}))
"""


def core_only(*argvs: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CORE_ONLY, ",".join(BLOCKED), json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_help_and_the_read_commands_need_no_pipeline_module(store: Path, tmp_path: Path) -> None:
    at = ["--store", str(store)]
    out = tmp_path / "v.txt"
    result = core_only(
        ["--help"],
        ["artefacts", "list", "--json", *at],
        ["artefacts", "show", "tiny", *at],
        ["artefacts", "verify", "tiny", "--json", *at],
        ["artefacts", "diff", "tiny", "v0001", "v0002", "--json", *at],
        ["artefacts", "export", "tiny", "--format", "w2v-text", "--out", str(out), *at],
        ["neighbors", "tiny", "king", "-k", "2", "--json", *at],
    )
    assert result["refused"] and result["loaded"] == []
    helped, listed, shown, verified, diffed, exported, neighbours = result["runs"]
    for run in result["runs"]:
        assert run["code"] == 0 and run["err"] == "", run
    assert "artefacts" in helped["out"] and "neighbors" in helped["out"]
    assert json.loads(listed["out"]) == [
        {"name": "tiny", "version": "v0001", "aliases": []},
        {"name": "tiny", "version": "v0002", "aliases": ["latest"]},
    ]
    assert json.loads(shown["out"])["version"] == "v0002"
    assert json.loads(verified["out"])["verified"] is True
    assert json.loads(diffed["out"])["b"]["version"] == "v0002"
    assert exported["out"].strip() == str(out) and out.read_text().startswith("6 8\n")
    found = json.loads(neighbours["out"])["neighbours"]
    assert {n["token"] for n in found} == {"prince", "queen"}


def test_a_pipeline_command_without_its_modules_fails_on_import(store: Path) -> None:
    """`embedpipe train` on the core install: one line naming torch and the install to run
    (exit 1), and the CLI itself still starts."""
    result = core_only(["artefacts", "list", "--store", str(store)], ["train"])
    listed, train = result["runs"]
    assert listed["code"] == 0 and "tiny\tv0002\tlatest" in listed["out"]
    assert train["code"] == 1
    assert train["err"] == (
        "embedpipe: error: No module named 'torch' (core install) (this command needs the "
        "pipeline's dependencies: pip install 'embedpipe[pipeline]')\n"
    )
