"""The ``theworld`` command line: ``theworld demo | train | eval | generate | inspect | export | push | tiny | plan``.

Each subcommand is a module of this package providing ``add_arguments(parser)`` and ``run(args) -> int``; it uses the
library (``theworld.*``), which never imports the command line. Modules are imported only when their subcommand runs,
so ``theworld --help`` stays fast.

Errors: every bad input (a missing or unreadable file, a wrong type or value, a corrupt checkpoint, an invalid config)
ends the command with one line ``error: ...`` on stderr that names the problem and the fix, and exit status 2, never a
traceback (``-v`` adds the traceback). Nothing from a checkpoint runs unless ``--trust-remote-code`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

SUBCOMMANDS = {
    "demo": ("theworld.cli.demo", "Offline demo: tiny bases, synthetic data, train TheWorld and a baseline, evaluate."),
    "train": ("theworld.cli.train", "Train TheWorld from a yaml/json config (works under `accelerate launch`)."),
    "eval": ("theworld.cli.eval", "Evaluate a checkpoint on VSR-style data (generation or logit scoring)."),
    "generate": ("theworld.cli.generate", "Generate an answer for an image and a prompt."),
    "inspect": ("theworld.cli.inspect", "Describe a checkpoint folder or hub repo."),
    "export": ("theworld.cli.export", "Re-save a checkpoint (partial or full)."),
    "push": ("theworld.cli.push", "Upload a checkpoint folder to the hub."),
    "tiny": ("theworld.cli.tiny", "Build tiny seeded base models in hub layout."),
    "plan": ("theworld.cli.plan", "Plan a TheWorld setting at real scale: tokens, attention reach, memory, sizes."),
}

#: Exit status of a command that stopped on bad input (argparse's usage errors use it too).
EXIT_BAD_INPUT = 2


def echo(text: str = "", stream=None) -> None:
    """Write one line of command output (the subcommands' only way to print) and flush it."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def error(message: str) -> int:
    """Print ``error: message`` on stderr; return `EXIT_BAD_INPUT` (``return error(...)`` in a command's ``run``)."""
    echo(f"error: {message}", sys.stderr)
    return EXIT_BAD_INPUT


class _Parser(argparse.ArgumentParser):
    """argparse with the command line's error format: the usage, then one ``error: ...`` line, exit status 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        echo(f"error: {message} (see `{self.prog} --help`)", sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (reported as ``error: ...``, exit 2) rather than a bug.

    ``ValueError`` and ``TypeError`` (invalid values and types, corrupt json), ``OSError`` (missing, unreadable or
    unreachable files and repos), ``ImportError`` (an optional dependency a checkpoint needs), and the parsers' own
    errors: yaml, safetensors and PIL's decompression-bomb refusal.
    """
    import yaml
    from PIL import Image
    from safetensors import SafetensorError

    return (ValueError, TypeError, OSError, ImportError, yaml.YAMLError, SafetensorError, Image.DecompressionBombError)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = _Parser(prog="theworld", description="TheWorld: Gemma 3 with world tokens from Cosmos-Predict2.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level; show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, (_, help_text) in SUBCOMMANDS.items():
        parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    return parser, parsers


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (0 ok, 2 bad input)."""
    argv = sys.argv[1:] if argv is None else argv
    parser, parsers = build_parser()
    # Find the subcommand first and let its module add its own arguments, so that `theworld CMD --help` lists them.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[command][0])
        module.add_arguments(parsers[command])
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed
        return int(stop.code or 0)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(module.run(args) or 0)
    except bad_input_errors() as err:
        if args.verbose:
            traceback.print_exc()
        return error(str(err).strip() or type(err).__name__)


if __name__ == "__main__":
    raise SystemExit(main())
