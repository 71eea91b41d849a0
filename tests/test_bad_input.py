"""Bad data given to the training command: exit 2 and one line naming the culprit, nothing trained.

The entry point's `main` runs in-process (the exit code and stderr are the same as from the shell;
test_config runs one real subprocess) to keep the suite fast.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, TINY_CONFIG
from training.train import main


def _small_source(tmp_path: Path, esc50_mini: Path, rows: int = 6) -> Path:
    source = tmp_path / "esc"
    (source / "meta").mkdir(parents=True)
    (source / "audio").mkdir()
    table = pd.read_csv(esc50_mini / "meta" / "esc50.csv").head(rows)
    table.to_csv(source / "meta" / "esc50.csv", index=False)
    for name in table["filename"]:
        shutil.copy(esc50_mini / "audio" / name, source / "audio" / name)
    return source


@pytest.fixture
def run_training(tmp_path: Path, capsys):
    def run(source: Path) -> tuple[int, str]:
        argv = [
            "--config", str(TINY_CONFIG), "--no-progress", f"output_dir={tmp_path / 'run'}", f"data.source={source}",
            f"data.cache_dir={tmp_path / 'cache'}", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "train.batch_size=2", "train.max_steps=1",
        ]  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        return exit_info.value.code, capsys.readouterr().err

    return run


def _assert_one_line_error(result: tuple[int, str], *names: str) -> None:
    code, stderr = result
    assert code == 2, stderr[-2000:]
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in stderr
    for name in names:
        assert name in error_lines[0]


def test_missing_audio_file_is_named(tmp_path, esc50_mini, run_training) -> None:
    source = _small_source(tmp_path, esc50_mini)
    victim = sorted((source / "audio").iterdir())[2]
    victim.unlink()
    _assert_one_line_error(run_training(source), victim.name, "missing")
    assert not (tmp_path / "run").exists()  # checked before the folder is claimed: a corrected rerun may use it
    _assert_one_line_error(run_training(tmp_path / "no-such-folder"), "no-such-folder")
    assert not (tmp_path / "run").exists()


def test_corrupt_audio_files_are_all_named_at_once(tmp_path, esc50_mini, run_training) -> None:
    source = _small_source(tmp_path, esc50_mini)
    first, second = sorted((source / "audio").iterdir())[1:3]
    first.write_bytes(first.read_bytes()[:200])  # truncated FLAC
    second.write_bytes(b"this is not audio")
    _assert_one_line_error(run_training(source), first.name, second.name, "2 bad audio file")


@pytest.mark.parametrize("column", ["target", "filename"])
def test_csv_without_required_column_is_named(tmp_path, esc50_mini, run_training, column: str) -> None:
    source = _small_source(tmp_path, esc50_mini)
    csv = source / "meta" / "esc50.csv"
    pd.read_csv(csv).drop(columns=[column]).to_csv(csv, index=False)
    _assert_one_line_error(run_training(source), "esc50.csv", column)


def test_the_error_line_is_the_last_thing_a_command_prints_even_through_a_pipe(tmp_path):
    """stdout is block-buffered into a pipe: unflushed, its text came out after our error line, at exit."""
    script = tmp_path / "command.py"
    script.write_text(
        "from core.errors import UserError, exit_on_user_error\n"
        "@exit_on_user_error\n"
        "def main():\n"
        "    print('scanning 200 clips ...')\n"
        "    raise UserError('data.source x: 3 problem(s)')\n"
        "main()\n"
    )
    completed = subprocess.run(
        [sys.executable, str(script)], cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
    )  # fmt: skip
    lines = completed.stdout.strip().splitlines()
    assert completed.returncode == 2 and lines[-1] == "error: data.source x: 3 problem(s)", lines
