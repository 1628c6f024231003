"""The CLI on a tiny published artefact: neighbors, evaluate with a user pairs file,
artefacts; and how it fails: one line on stderr, exit 2 (command line, config) or 1."""

import ast
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from embedpipe import schemas as S
from embedpipe.cli import main

Cli = Callable[..., subprocess.CompletedProcess[str]]  # the `cli` fixture


def test_neighbors(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["neighbors", "tiny", "King", "-k", "2", "--store", str(store)])
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] in (
        ["prince", "queen"],
        ["queen", "prince"],
    )


def test_evaluate_with_user_pairs(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "mine.tsv"
    pairs.write_text("king\tprince\t9\nking\tcabbage\t1\nzebra\tking\t5\n")
    main(["evaluate", "tiny", "--store", str(store), "--pairs", str(pairs)])
    result = json.loads(capsys.readouterr().out)
    assert result["mine.tsv"]["pairs"] == 3 and result["mine.tsv"]["found"] == 2
    assert result["mine.tsv"]["oov_rate"] == pytest.approx(1 / 3)
    assert set(result) >= {"wordsim353", "simlex999", "analogy", "neighbours"}


def test_artefacts_commands(
    store: Path, tmp_path: Path, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main(["artefacts", "alias", "tiny", "production", "v0001", "--store", str(store)])
    main(["artefacts", "list", "--store", str(store)])
    listing = capsys.readouterr().out.splitlines()
    assert "tiny\tv0001\tproduction" in listing and "tiny\tv0002\tlatest" in listing
    capsys.readouterr()
    with pytest.raises(SystemExit) as failed:
        main(["artefacts", "delete", "tiny", "v0001", "--store", str(store)])
    assert failed.value.code == 1
    assert "production" in capsys.readouterr().err
    out = tmp_path / "vectors.parquet"
    main(
        [
            "artefacts",
            "export",
            "tiny",
            "--format",
            "parquet",
            "--out",
            str(out),
            "--store",
            str(store),
        ]
    )
    assert pq.read_table(out).column(S.TOKEN).to_pylist() == words
    main(["artefacts", "verify", "tiny", "--store", str(store)])
    assert "every file matches" in capsys.readouterr().out


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line an expected error prints (no traceback, nothing on stdout)."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedpipe: error: "), captured.err
    return lines[0].removeprefix("embedpipe: error: ")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from embedpipe import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"embedpipe {__version__}"


@pytest.mark.parametrize(
    "toml, message",
    [
        ('[vocab]\nmin_count = "five"\n', "vocab.min_count: expected an integer, got 'five'"),
        ("[train]\nepochs = -1\n", "train.epochs must be >= 1, got -1"),
        ('[corpus]\npaths = "x.txt"\n', 'corpus.paths: expected a list of str (write ["x.txt"])'),
        ("[vocab\n", "not valid toml"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, message: str
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(toml)
    with pytest.raises(SystemExit) as failed:
        main(["prepare", "--config", str(path)])
    assert failed.value.code == 2
    line = error_line(capsys)
    assert line.startswith(f"{path}: ") and message in line


def test_a_bad_override_and_a_missing_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[vocab]\nmin_count = 2\n")
    with pytest.raises(SystemExit) as failed:
        main(["train", "--config", str(path), "--set", "train.epochs=0"])
    assert failed.value.code == 2
    assert error_line(capsys) == "override 'train.epochs=0': train.epochs must be >= 1, got 0"
    with pytest.raises(SystemExit) as failed:
        main(["prepare", "--config", str(tmp_path / "missing.toml")])
    assert failed.value.code == 2
    assert error_line(capsys) == f"config file {tmp_path / 'missing.toml'} does not exist"


def test_store_errors_are_one_line(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["evaluate", "nosuch", "--store", str(store)],
        ["artefacts", "show", "tiny", "--version", "v0009", "--store", str(store)],
        ["neighbors", "tiny", "zebra", "--store", str(store)],
    ):
        with pytest.raises(SystemExit) as failed:
            main(argv)
        assert failed.value.code == 1
        error_line(capsys)
    (store / "tiny" / "v0002" / "vocab.parquet").write_bytes(b"changed")
    with pytest.raises(SystemExit) as failed:
        main(["artefacts", "verify", "tiny", "--store", str(store)])
    assert failed.value.code == 1
    assert "vocab.parquet" in error_line(capsys)


def test_debug_shows_the_traceback(store: Path) -> None:
    from embedpipe.artefacts import ArtefactError

    for argv in (
        ["--debug", "evaluate", "nosuch", "--store", str(store)],
        ["evaluate", "nosuch", "--store", str(store), "--debug"],
    ):
        with pytest.raises(ArtefactError, match="nosuch"):
            main(argv)


def test_corpus_and_checkpoint_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedpipe.corpus.sources import CorpusError
    from embedpipe.corpus.spark import launch
    from embedpipe.train import launch as train_launch
    from embedpipe.train.checkpoint import CheckpointError

    def corpus_fails(*args: object, **kwargs: object) -> None:
        raise CorpusError("input path /data/x does not exist or holds no files")

    def checkpoint_fails(*args: object, **kwargs: object) -> None:
        raise CheckpointError("work/train/step-3.safetensors:\nsha256 mismatch")

    monkeypatch.setattr(launch, "launch_stage", corpus_fails)
    monkeypatch.setattr(train_launch, "run_training", checkpoint_fails)
    with pytest.raises(SystemExit) as failed:
        main(["prepare"])
    assert failed.value.code == 1
    assert error_line(capsys) == "input path /data/x does not exist or holds no files"
    with pytest.raises(SystemExit) as failed:
        main(["train"])
    assert failed.value.code == 1
    assert error_line(capsys) == "work/train/step-3.safetensors:; sha256 mismatch"


def test_an_unexpected_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from embedpipe.corpus.spark import launch

    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(launch, "launch_stage", bug)
    with pytest.raises(ZeroDivisionError):
        main(["prepare"])


@pytest.mark.parametrize(
    "command",
    [
        ["artefacts", "list", "--store"],
        ["artefacts", "show", "tiny", "--store"],
        ["neighbors", "tiny", "king", "--json", "--store"],
        ["--help"],
        ["artefacts", "diff", "--help"],
    ],
)
def test_a_closed_pipe_ends_quietly(store: Path, command: list[str]) -> None:
    """`embedpipe artefacts list | head -0`: no BrokenPipeError, no traceback; 141, or 1
    for the help (rich prints it, and exits 1 on a closed pipe)."""
    at = [str(store)] if command[-1] == "--store" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedpipe.cli", *command, *at],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader goes away before the first line is written
    _, err = proc.communicate(timeout=120)
    assert err == b""
    assert proc.returncode == (1 if "--help" in command else 141)


def test_show_piped_into_head(store: Path) -> None:
    """`embedpipe artefacts show tiny | head -1` in a shell: the first line, nothing on
    stderr, and the CLI ends with 0 (it wrote all before head left) or 141 (it did not)."""
    cli = f"{sys.executable} -m embedpipe.cli artefacts show tiny --store {store}"
    done = subprocess.run(
        ["bash", "-c", f'{cli} | head -1; echo "status ${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout == "{\n"
    assert done.stderr in ("status 0\n", "status 141\n")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuch"], "No such command 'nosuch'. (see 'embedpipe --help')"),
        (
            ["artefacts", "list", "--bogus"],
            "No such option: --bogus (see 'embedpipe artefacts list --help')",
        ),
        (["neighbors"], "Missing argument 'artefact'. (see 'embedpipe neighbors --help')"),
        (
            ["artefacts", "gc", "x"],
            "Missing option '--keep'. (see 'embedpipe artefacts gc --help')",
        ),
        (
            ["prepare", "--stage", "nope"],
            "Invalid value for '--stage': 'nope' is not one of 'tokenize', 'build_vocab', "
            "'encode', 'bucket', 'cooccur'. (see 'embedpipe prepare --help')",
        ),
        (
            ["neighbors", "x", "y", "-k", "many"],
            "Invalid value for '-k': Input should be a valid integer",
        ),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as failed:
        main(argv)
    assert failed.value.code == 2
    assert error_line(capsys).startswith(message)


def test_help_and_a_bare_group(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` exits 0 listing every command; a group without its command prints its help
    and exits 2 (usage)."""
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for command in ("run", "prepare", "train", "publish", "config", "evaluate", "neighbors"):
        assert f"│ {command} " in shown
    assert "--install-completion" in shown and "--debug" in shown
    with pytest.raises(SystemExit) as bare:
        main(["artefacts"])
    assert bare.value.code == 2
    assert "│ verify " in capsys.readouterr().out


def test_stage_busy_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedpipe.corpus.spark import launch
    from embedpipe.corpus.spark.lock import StageBusyError

    def busy(*args: object, **kwargs: object) -> None:
        raise StageBusyError("stage tokenize on workdir work is held by host h pid 7")

    monkeypatch.setattr(launch, "launch_stage", busy)
    with pytest.raises(SystemExit) as failed:
        main(["prepare", "--stage", "tokenize"])
    assert failed.value.code == 1
    assert error_line(capsys) == "stage tokenize on workdir work is held by host h pid 7"


def test_a_failed_torchrun_is_one_line_after_the_workers_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedpipe.train import launch

    def fails(config: object, out: object, log: Callable[[str], None]) -> None:
        log("[rank0]: ZeroDivisionError: division by zero")
        raise launch.TrainingFailed("training failed: torchrun exited with 1")

    monkeypatch.setattr(launch, "run_training", fails)
    with pytest.raises(SystemExit) as failed:
        main(["train"])
    assert failed.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == "[rank0]: ZeroDivisionError: division by zero\n"
    assert captured.err == "embedpipe: error: training failed: torchrun exited with 1\n"


def test_an_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    from embedpipe.corpus.spark import launch

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "launch_stage", interrupted)
    with pytest.raises(SystemExit) as stopped:
        main(["prepare"])
    assert stopped.value.code == 130


def test_take_debug_moves_it_before_the_command() -> None:
    from embedpipe.cli import take_debug

    assert take_debug(["evaluate", "x", "--debug"]) == (True, ["--debug", "evaluate", "x"])
    assert take_debug(["evaluate", "x"]) == (False, ["evaluate", "x"])
    assert take_debug(["neighbors", "x", "--", "--debug"]) == (
        False,
        ["neighbors", "x", "--", "--debug"],
    )


def test_shell_completion_of_commands_stages_and_names(store: Path, cli: Cli) -> None:
    """What bash completion asks (typer's protocol): commands, a choice, the store's names."""

    def complete(line: str, **env: str) -> list[str]:
        words = line.split(" ")
        variables = {"_EMBEDPIPE_COMPLETE": "complete_bash", "COMP_WORDS": line}
        variables["COMP_CWORD"] = str(len(words) - 1)
        done = cli(env={**os.environ, **variables, **env})
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("embedpipe art") == ["artefacts"]
    assert complete("embedpipe prepare --stage b") == ["build_vocab", "bucket"]
    assert complete("embedpipe artefacts show --store " + str(store) + " t") == ["tiny"]
    assert complete("embedpipe neighbors ", EMBEDPIPE_STORE=str(store)) == ["tiny"]


@pytest.mark.parametrize(
    "argv, stages",
    [
        ([], ["tokenize", "build_vocab", "encode"]),
        (["--set", "train.model=glove"], ["tokenize", "build_vocab", "encode", "cooccur"]),
        (["--set", "train.model=mlm"], ["tokenize", "build_vocab", "encode", "bucket"]),
        (["--all"], ["tokenize", "build_vocab", "encode", "bucket", "cooccur"]),
        (["--stage", "cooccur", "--set", "train.model=mlm"], ["cooccur"]),
    ],
)
def test_prepare_runs_the_stages_the_model_reads(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], stages: list[str]
) -> None:
    """By default the tables train.model reads and what they are made from; --all every
    table; --stage the ones named."""
    from embedpipe.corpus.spark import launch

    ran: list[str] = []

    def stage(name: str, config: object, log: object) -> dict[str, object]:
        ran.append(name)
        return {"skipped": False, "seconds": 0.1, "counts": {}}

    monkeypatch.setattr(launch, "launch_stage", stage)
    main(["prepare", *argv])
    assert ran == stages


def test_prepare_takes_stages_or_all_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as failed:
        main(["prepare", "--all", "--stage", "tokenize"])
    assert failed.value.code == 2
    assert "give --stage or --all, not both" in error_line(capsys)


def loaded_after(statements: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after running `statements`."""
    code = f"import sys\n{statements}\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip())


def test_prepare_loads_no_kernel_compiler_or_artefact_code() -> None:
    """The driver of `prepare` plans the stages; numba (the tasks' kernels) and the
    artefacts package (other commands') stay unloaded: they are start-up time."""
    plans = (
        "import embedpipe.cli\n"
        "from embedpipe.corpus.registry import STAGES\n"
        "functions = [stage.load() for stage in STAGES.values()]"
    )
    assert loaded_after(plans, ("numba", "embedpipe.artefacts", "torch")) == []


def test_the_command_line_starts_without_numpy_pyarrow_pyspark_or_rich() -> None:
    """Until a command needs them, the command line loads none of them: `prepare` launches
    Spark's JVM first and imports them while it starts; rich only draws a live bar."""
    starts = "import embedpipe.cli\nimport embedpipe.corpus.spark.session"
    modules = ("numpy", "pyarrow", "pandas", "pyspark", "rich")
    assert loaded_after(starts, modules) == []
