"""``theworld tiny``: build tiny seeded Gemma 3 and Cosmos-Predict2 base models in hub layout.

Example::

    theworld tiny /tmp/theworld-bases --seed 0 --size tiny     # or small / tiny-real / base100m
"""

from __future__ import annotations

import argparse

from . import echo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from theworld.tiny import SIZES

    parser.add_argument("out_dir", help="folder that receives gemma/ and cosmos/")
    parser.add_argument("--seed", type=int, default=0, help="seed of every weight (default 0)")
    parser.add_argument("--size", choices=SIZES, default="tiny", help="size preset (default tiny)")


def run(args: argparse.Namespace) -> int:
    from theworld.tiny import build_tiny_bases

    bases = build_tiny_bases(args.out_dir, seed=args.seed, size=args.size)
    echo(f"gemma:  {bases.gemma}\ncosmos: {bases.cosmos}")
    return 0


__all__ = ["add_arguments", "run"]
