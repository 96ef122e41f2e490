"""``flywheel tune``'s refusals: no dataset, an incomplete one, bad options and bad ranges (exit codes, messages)."""

from __future__ import annotations

from pathlib import Path

from test_cli import flywheel


def test_tune_without_a_dataset_exits_1_saying_where_it_looked(tmp_path: Path) -> None:
    result = flywheel("tune", env={"FLYWHEEL_REFRESH__WORK_DIR": str(tmp_path / "refreshes")})
    assert result.returncode == 1
    assert f"no curated dataset under '{tmp_path / 'refreshes'}'; run a refresh or pass --dataset" in result.stderr


def test_tune_on_an_incomplete_dataset_exits_1_naming_the_missing_files(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("", encoding="utf-8")
    result = flywheel("tune", "--dataset", str(tmp_path))
    assert result.returncode == 1
    assert f"'{tmp_path}' is not a curated dataset: no held_out.jsonl, manifest.json" in result.stderr


def test_tune_refuses_a_bad_budget_and_a_bad_range_with_exit_2(tmp_path: Path) -> None:
    budget = flywheel("tune", "--dataset", str(tmp_path), "--trials", "0")
    ranges = flywheel("tune", env={"FLYWHEEL_TUNING__LEARNING_RATE": "[0.01, 0.001]"})
    assert budget.returncode == 2
    assert "--trials" in budget.stderr
    assert ranges.returncode == 2
    assert "tuning.learning_rate: Value error, low (0.01) must not exceed high (0.001)" in ranges.stderr


def test_tune_refuses_a_study_name_that_is_no_file_name(tmp_path: Path) -> None:
    for name in ("train.jsonl", "held_out.jsonl", "manifest.json"):
        (tmp_path / name).write_text("", encoding="utf-8")
    result = flywheel("tune", "--dataset", str(tmp_path), "--study", "../escape")
    assert result.returncode == 1
    assert "study name '../escape': use 1 to 64 letters, digits, '_', '.' or '-'" in result.stderr
