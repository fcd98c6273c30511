"""README.md is true: ``tools/check_readme.py`` runs its snippets offline on the tiny bases and exits 0 (about a
minute); plus cheap tests of the checker itself on small synthetic READMEs (a failing snippet is reported with its
README line, a removed flag fails the parser check, malformed markers are refused, the config table is compared)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKER = REPO / "tools" / "check_readme.py"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_readme", CHECKER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


check_readme = _load_checker()


def fence(lang: str, code: str) -> str:
    return f"```{lang}\n{code}\n```\n"


# ----------------------------------------------------------------------------------------------------------------------
# The README itself
# ----------------------------------------------------------------------------------------------------------------------
def test_readme_is_true():
    """The whole check, as ``make test`` and a user run it: a fresh interpreter, offline, in a temporary folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    proc = subprocess.run(
        [sys.executable, str(CHECKER)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]
    assert "README is true" in proc.stdout


# ----------------------------------------------------------------------------------------------------------------------
# The checker on synthetic READMEs
# ----------------------------------------------------------------------------------------------------------------------
def test_a_failing_snippet_is_reported_with_its_readme_line(tmp_path):
    text = (
        "# Title\n\n"
        + fence("python", "value = 41")
        + "\nprose\n\n"
        + fence("python", "value += 1\nassert value == 43, value")  # lines 10-11: the assert fails on line 11
        + "\n"
        + fence("python", "raise SystemExit('never reached')")
    )
    readme = tmp_path / "README.md"
    readme.write_text(text)
    blocks = check_readme.extract_blocks(text)
    assert [(b.lang, b.line, b.action) for b in blocks] == [("python", 4, "run"), ("python", 10, "run"),
                                                              ("python", 15, "run")]  # fmt: skip
    errors = check_readme.run_python_blocks(blocks, readme)
    assert len(errors) == 1  # the first failure stops the run: later blocks depend on earlier ones
    assert errors[0].startswith("README line 10: python block failed")
    assert f'File "{readme}", line 11' in errors[0] and "AssertionError: 42" in errors[0]


def test_skipped_blocks_do_not_run_and_name_their_reason(tmp_path):
    text = "<!-- readme-check: skip (needs a GPU) -->\n" + fence("python", "raise RuntimeError('ran')")
    (block,) = check_readme.extract_blocks(text)
    assert (block.action, block.reason) == ("skip", "needs a GPU")
    assert check_readme.run_python_blocks([b for b in [block] if b.action == "run"], tmp_path / "README.md") == []


@pytest.mark.parametrize(
    "marker, message",
    [
        ("<!-- readme-check: skip -->", "unknown readme-check marker 'skip'"),
        ("<!-- readme-check: skip () -->", "unknown readme-check marker 'skip ()'"),
        ("<!-- readme-check: sikp (typo) -->", "unknown readme-check marker"),
    ],
)
def test_a_skip_marker_without_a_reason_is_refused(marker, message):
    with pytest.raises(check_readme.ReadmeError, match=re.escape(f"README line 1: {message}")):
        check_readme.extract_blocks(marker + "\n" + fence("python", "x = 1"))


def test_misplaced_markers_and_open_fences_are_refused(tmp_path):
    with pytest.raises(check_readme.ReadmeError, match=r"README line 1: readme-check marker not followed by a code"):
        check_readme.extract_blocks("<!-- readme-check: run -->\nsome prose\n" + fence("bash", "theworld --help"))
    with pytest.raises(check_readme.ReadmeError, match=r"'run' marks ```bash blocks"):
        check_readme.extract_blocks("<!-- readme-check: run -->\n" + fence("python", "x = 1"))
    with pytest.raises(check_readme.ReadmeError, match=r"README line 2: code fence is never closed"):
        check_readme.extract_blocks("text\n```python\nx = 1\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- readme-check: skip -->\n" + fence("python", "x = 1"))
    assert check_readme.main(["--readme", str(readme), "--list"]) == 1  # refused before anything runs


def test_a_removed_flag_fails_the_parser_check():
    code = "\n".join(
        [
            "theworld export checkpoints/a checkpoints/b --full          # fine",
            "theworld export checkpoints/a checkpoints/b --no-such-flag",
            "accelerate launch --num_processes 2 -m theworld.cli train --config configs/tiny_synthetic.yaml --bogus 1",
            "theworld plan \\",
            "    --world-pooling 1 --json | head -3",  # a continuation line and a pipe: parsed up to the pipe
            "theworld frobnicate",
            "echo not a theworld line --whatever",
        ]
    )
    text = "# T\n\n" + fence("bash", code)
    errors = check_readme.check_command_lines(check_readme.extract_blocks(text))
    assert len(errors) == 3, errors
    assert errors[0].startswith("README line 5: `theworld export checkpoints/a checkpoints/b --no-such-flag` does not")
    assert "unrecognized arguments: --no-such-flag" in errors[0]
    assert errors[1].startswith("README line 6:") and "unrecognized arguments: --bogus 1" in errors[1]
    assert errors[2].startswith("README line 9:") and "unknown subcommand 'frobnicate'" in errors[2]


def test_named_repository_files_must_exist():
    text = fence("bash", "theworld train --config configs/tiny_synthetic.yaml\npython benchmarks/no_such_bench.py")
    errors = check_readme.check_repo_paths(check_readme.extract_blocks(text))
    assert errors == ["README line 3: benchmarks/no_such_bench.py does not exist in the repository."]


def test_the_config_table_must_match_the_train_config():
    table = check_readme.fields_table()
    assert table.startswith("| field | default | meaning |") and "| `output_dir` |" in table
    assert check_readme.check_fields_table(f"# T\n\n{table}\n\nmore\n") == []
    rows = table.splitlines()
    edited = "\n".join(rows[:3] + [rows[3].replace("| `", "| `renamed_", 1)] + rows[4:])
    (error,) = check_readme.check_fields_table(f"# T\n\n{edited}\n")
    assert error.startswith("README line 6: the config table differs") and "renamed_" in error
    assert check_readme.check_fields_table("# T\n\nno table\n")[0].startswith("README holds no config table")


def test_run_blocks_report_a_failing_command(tmp_path, capsys):
    text = "<!-- readme-check: run -->\n" + fence("bash", "theworld inspect does/not/exist")
    (block,) = check_readme.extract_blocks(text)
    errors = check_readme.run_bash_blocks([block], tmp_path, dict(os.environ))
    assert errors == ["README line 3: `theworld inspect does/not/exist` exited with 2"]
    assert "error: " in capsys.readouterr().err
