"""Check that README.md is true: run its Python snippets and selected shell blocks, offline, on the tiny bases.

    python tools/check_readme.py                  # the check (about a minute on a 2-core CPU); exit status 0 or 1
    python tools/check_readme.py --list           # the README's code blocks and what the check does with each
    python tools/check_readme.py --fields-table   # the `theworld train` config table, as the README must hold it

Markers: an HTML comment on the line right before a fenced code block (blank lines in between are allowed).

* ``<!-- readme-check: skip (reason) -->`` before a ```python block that cannot run offline on the tiny bases (a
  real hub id, a GPU, a network upload, a run of minutes). The reason is required.
* ``<!-- readme-check: run -->`` before a ```bash block that the check runs (keep these few and fast).

What the check does:

1. Every ```python block not marked skip runs, in README order, in ONE namespace (one interpreter, ``exec``), in a
   fresh temporary working directory that holds a copy of the repository's ``configs/``. The environment is offline
   (``HF_HUB_OFFLINE=1``), ``HF_HOME`` points into the temporary directory (the rollout prompt cache and any hub cache
   land there, never in the user's), progress bars are off. Tracebacks name the README line.
2. Then every ```bash block marked run, in README order, in the same directory. A block made only of plain
   ``theworld ...`` command lines (no shell variables, pipes or redirections) runs each line through the console
   script's own entry point, ``theworld.cli.main``, in this interpreter (the same code as the ``theworld`` executable,
   without paying the import time again) and needs exit status 0; any other block runs under ``bash -euo pipefail``
   with this interpreter's ``bin/`` first on ``PATH``.
3. Without running anything: every ``theworld ...`` command line of every ```bash block (and the part after
   ``-m theworld.cli`` of ``accelerate launch`` / ``torchrun`` lines) must parse with that subcommand's own argument
   parser (a renamed or removed flag fails here), every repository file a code block names (``configs/*.yaml``,
   ``benchmarks/*.py``, ``tools/*.py``) must exist, and the README must hold the `theworld train` config table exactly
   as ``--fields-table`` prints it (a field added, removed or re-documented in ``TrainConfig`` fails here).

Exit status 1 names the README line of each failing block.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

MARKER_RE = re.compile(r"^\s*<!--\s*readme-check:\s*(?P<body>.*?)\s*-->\s*$")
SKIP_RE = re.compile(r"^skip\s*\((?P<reason>.*\S.*)\)$")
FENCE_RE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
#: Repository files a code block may name; each must exist.
REPO_PATH_RE = re.compile(r"(?<![\w/.-])((?:configs|benchmarks|tools)/[\w.-]+\.(?:ya?ml|py))\b")
#: Tokens that end a command line for the argument-parser check (shell operators and redirections).
SHELL_OPERATORS = ("|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1")
#: Characters that make a run block need a real shell.
SHELL_SYNTAX = re.compile(r"[$|&;<>`()]")


@dataclasses.dataclass
class Block:
    """One fenced code block of the README. ``line``: README line number of its first code line."""

    lang: str
    line: int
    code: str
    marker: str | None = None  # "skip", "run" or None
    reason: str | None = None

    @property
    def action(self) -> str:
        """What the check does with the block: ``"run"``, ``"skip"`` or ``"parse"`` (bash, command lines only)."""
        if self.lang == "python":
            return "skip" if self.marker == "skip" else "run"
        if self.lang == "bash":
            return "run" if self.marker == "run" else "parse"
        return "none"


class ReadmeError(ValueError):
    """A malformed README: an unknown or misplaced marker, an unclosed fence."""


def extract_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text`` with their markers; `ReadmeError` for a malformed marker or fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: tuple[int, str] | None = None  # (line, marker body) waiting for its block
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER_RE.match(line)
        if marker:
            if pending is not None:
                raise ReadmeError(f"README line {pending[0]}: readme-check marker not followed by a code block.")
            pending = (i + 1, marker.group("body"))
            i += 1
            continue
        fence = FENCE_RE.match(line)
        if fence:
            lang = fence.group("lang")
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if end == len(lines):
                raise ReadmeError(f"README line {i + 1}: code fence is never closed.")
            block = Block(lang=lang, line=start + 1, code="\n".join(lines[start:end]) + "\n")
            if pending is not None:
                _apply_marker(block, *pending)
                pending = None
            blocks.append(block)
            i = end + 1
            continue
        if line.strip() and pending is not None:
            raise ReadmeError(f"README line {pending[0]}: readme-check marker not followed by a code block.")
        i += 1
    if pending is not None:
        raise ReadmeError(f"README line {pending[0]}: readme-check marker not followed by a code block.")
    return blocks


def _apply_marker(block: Block, line: int, body: str) -> None:
    if body == "run":
        if block.lang != "bash":
            raise ReadmeError(
                f"README line {line}: 'run' marks ```bash blocks; ```{block.lang} blocks run unless marked skip."
            )
        block.marker = "run"
        return
    skip = SKIP_RE.match(body)
    if skip:
        if block.lang != "python":
            raise ReadmeError(
                f"README line {line}: 'skip (...)' marks ```python blocks; ```{block.lang} blocks only run when "
                "marked run."
            )
        block.marker, block.reason = "skip", skip.group("reason").strip()
        return
    raise ReadmeError(
        f"README line {line}: unknown readme-check marker {body!r}; use 'skip (reason)' before a python block or "
        "'run' before a bash block."
    )


# ----------------------------------------------------------------------------------------------------------------------
# Command lines
# ----------------------------------------------------------------------------------------------------------------------
def logical_lines(code: str) -> list[tuple[int, str]]:
    """``(offset of the first physical line, text)`` of each shell line, with ``\\`` continuations joined."""
    out: list[tuple[int, str]] = []
    buffer, first = "", 0
    for offset, raw in enumerate(code.splitlines()):
        if not buffer:
            first = offset
        if raw.rstrip().endswith("\\"):
            buffer += raw.rstrip()[:-1] + " "
            continue
        buffer += raw
        if buffer.strip():
            out.append((first, buffer.strip()))
        buffer = ""
    if buffer.strip():
        out.append((first, buffer.strip()))
    return out


def theworld_argv(line: str) -> list[str] | None:
    """The ``theworld`` arguments of a shell line (``theworld X ...`` or ``... -m theworld.cli X ...``), cut at the
    first shell operator; ``None`` for other lines."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    for index, token in enumerate(tokens):
        if token in SHELL_OPERATORS or token.startswith((">", "2>", "|")):
            tokens = tokens[:index]
            break
    if tokens and tokens[0] == "theworld":
        return tokens[1:]
    for index in range(len(tokens) - 1):
        if tokens[index] == "-m" and tokens[index + 1] == "theworld.cli":
            return tokens[index + 2 :]
    return None


def parse_command_line(argv: list[str]) -> str | None:
    """Parse ``theworld`` arguments with the subcommand's own parser; the parser's message when they do not parse."""
    import importlib

    from theworld.cli import SUBCOMMANDS, build_parser

    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in SUBCOMMANDS:
        return f"unknown subcommand {command!r} (known: {', '.join(SUBCOMMANDS)})"
    parser, parsers = build_parser()
    importlib.import_module(SUBCOMMANDS[command][0]).add_arguments(parsers[command])
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as stop:
        if stop.code:
            return stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else f"exit {stop.code}"
    return None


def check_command_lines(blocks: list[Block]) -> list[str]:
    """Errors of the ``theworld`` command lines of every bash block (see the module docstring)."""
    errors = []
    for block in blocks:
        if block.lang != "bash":
            continue
        for offset, line in logical_lines(block.code):
            argv = theworld_argv(line)
            if argv is None:
                continue
            problem = parse_command_line(argv)
            if problem:
                errors.append(f"README line {block.line + offset}: `{line}` does not parse: {problem}")
    return errors


def check_repo_paths(blocks: list[Block], repo: Path = REPO) -> list[str]:
    """Errors for repository files named in code blocks that do not exist."""
    errors = []
    for block in blocks:
        for offset, raw in enumerate(block.code.splitlines()):
            for path in REPO_PATH_RE.findall(raw):
                if not (repo / path).is_file():
                    errors.append(f"README line {block.line + offset}: {path} does not exist in the repository.")
    return errors


# ----------------------------------------------------------------------------------------------------------------------
# The config table of `theworld train`
# ----------------------------------------------------------------------------------------------------------------------
def _markdown_cell(text: str) -> str:
    text = re.sub(r"(?<!`)(<[a-z_]+>)(?!`)", r"`\1`", text)  # <end_of_turn> would be an HTML tag
    return text.replace("|", "\\|")


def fields_table() -> str:
    """The README's table of `TrainConfig` fields, generated from what ``theworld train --list-fields`` prints."""
    from theworld.training import config_fields

    rows = ["| field | default | meaning |", "|---|---|---|"]
    for name, help_text, default in config_fields():
        rows.append(f"| `{name}` | `{json.dumps(default)}` | {_markdown_cell(help_text)} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------------
def check_fields_table(text: str) -> list[str]:
    """An error when ``text`` (the README) does not hold `fields_table` verbatim."""
    table = fields_table()
    if table in text:
        return []
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| field | default | meaning |")), None)
    if start is None:
        return ["README holds no config table ('| field | default | meaning |'); paste `--fields-table`'s output."]
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    readme_rows, wanted = lines[start:end], table.splitlines()
    first = next((i for i, (a, b) in enumerate(zip(readme_rows, wanted)) if a != b), min(len(readme_rows), len(wanted)))
    got = readme_rows[first] if first < len(readme_rows) else "(end of table)"
    want = wanted[first] if first < len(wanted) else "(end of table)"
    return [
        f"README line {start + first + 1}: the config table differs from `python tools/check_readme.py "
        f"--fields-table` (README: {got!r}; expected: {want!r}); replace the table with that output."
    ]


def offline_environment(work: Path) -> dict[str, str]:
    """Environment variables of the check: offline, caches inside ``work``, no progress bars."""
    hf_home = work / ".hf_home"
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MPLBACKEND": "Agg",
    }


def run_python_blocks(blocks: list[Block], readme: Path) -> list[str]:
    """Run the python blocks in one namespace; stop at the first failure (later blocks depend on earlier ones)."""
    namespace: dict = {"__name__": "__readme__"}
    for block in blocks:
        started = time.perf_counter()
        code = compile("\n" * (block.line - 1) + block.code, str(readme), "exec")
        try:
            exec(code, namespace)
        except BaseException:  # noqa: BLE001 - report any failure of a snippet, SystemExit included
            report = traceback.format_exc()
            return [f"README line {block.line}: python block failed\n{report}"]
        print(f"  ok  README line {block.line:4d}  python  {time.perf_counter() - started:6.2f} s", flush=True)
    return []


def _in_process(block: Block) -> list[list[str]] | None:
    """The ``theworld`` argument lists of a block made only of plain ``theworld`` lines, else ``None``."""
    commands = []
    for _, line in logical_lines(block.code):
        if line.startswith("#"):
            continue
        body = line.split(" #", 1)[0]
        if not body.startswith("theworld ") or SHELL_SYNTAX.search(body):
            return None
        commands.append(theworld_argv(body))
    return commands


def run_bash_blocks(blocks: list[Block], work: Path, env: dict[str, str]) -> list[str]:
    from theworld.cli import main as theworld_main

    errors = []
    for block in blocks:
        started = time.perf_counter()
        commands = _in_process(block)
        if commands is not None:
            for argv in commands:
                print(f"  $ theworld {shlex.join(argv)}", flush=True)
                status = theworld_main(argv)
                if status != 0:
                    errors.append(f"README line {block.line}: `theworld {shlex.join(argv)}` exited with {status}")
                    break
        else:
            path = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.code], cwd=work, env={**env, "PATH": path}, check=False
            )
            if result.returncode != 0:
                errors.append(f"README line {block.line}: bash block exited with {result.returncode}")
        if not errors:
            print(f"  ok  README line {block.line:4d}  bash    {time.perf_counter() - started:6.2f} s", flush=True)
    return errors


def check(readme: Path = README, keep: Path | None = None) -> list[str]:
    """Run the whole check (see the module docstring); return the errors (empty: the README is true).

    The environment is set before anything imports huggingface_hub (it reads ``HF_HOME`` once, at import).
    """
    text = readme.read_text(encoding="utf-8")
    blocks = extract_blocks(text)
    work = Path(tempfile.mkdtemp(prefix="theworld-readme-")) if keep is None else keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "configs", work / "configs", dirs_exist_ok=True)
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.update(offline_environment(work))
    env = dict(os.environ)
    os.chdir(work)
    try:
        errors = check_repo_paths(blocks) + check_command_lines(blocks) + check_fields_table(text)
        if not errors:
            errors = run_python_blocks([b for b in blocks if b.lang == "python" and b.action == "run"], readme)
        if not errors:
            errors = run_bash_blocks([b for b in blocks if b.lang == "bash" and b.action == "run"], work, env)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, default=README, help="the README to check (default: the repository's)")
    parser.add_argument("--list", action="store_true", help="list the code blocks and what the check does with each")
    parser.add_argument("--fields-table", action="store_true", help="print the `theworld train` config table")
    parser.add_argument("--keep", type=Path, default=None, help="working directory to use and keep (default: temp)")
    args = parser.parse_args(argv)
    if args.fields_table:
        print(fields_table())
        return 0
    try:
        blocks = extract_blocks(args.readme.read_text(encoding="utf-8"))
    except ReadmeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.list:
        for block in blocks:
            note = f"  ({block.reason})" if block.reason else ""
            print(f"README line {block.line:4d}  {block.lang or '-':8s} {block.action}{note}")
        return 0
    started = time.perf_counter()
    print(f"Checking {args.readme} ...", flush=True)
    errors = check(args.readme, args.keep)
    for error in errors:
        print(f"FAIL {error}", file=sys.stderr)
    counts = {a: sum(b.action == a for b in blocks) for a in ("run", "skip", "parse")}
    print(
        f"{'FAILED' if errors else 'README is true'}: {counts['run']} blocks run, {counts['skip']} python blocks "
        f"skipped, {counts['parse']} bash blocks parsed, in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
