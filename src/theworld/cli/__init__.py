"""The ``theworld`` command line: ``theworld demo | train | eval | generate | inspect | export | push | tiny | plan``.

Each subcommand is a module of this package providing ``add_arguments(parser)`` and ``run(args) -> int``; it uses the
library (``theworld.*``), which never imports the command line. Modules are imported only when their subcommand runs,
so ``theworld --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

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


def echo(text: str = "", stream=None) -> None:
    """Write one line of command output (the subcommands' only way to print) and flush it."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="theworld", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, (_, help_text) in SUBCOMMANDS.items():
        parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    return parser, parsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, parsers = build_parser()
    # Find the subcommand first and let its module add its own arguments, so that `theworld CMD --help` lists them.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[command][0])
        module.add_arguments(parsers[command])
    args = parser.parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
