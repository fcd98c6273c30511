"""``theworld train``: train TheWorld (or a Gemma-only baseline) from a yaml/json `TrainConfig`.

Examples::

    theworld train --config configs/tiny_synthetic.yaml --set max_steps=200
    theworld train --list-fields
    accelerate launch --multi_gpu --num_processes 2 -m theworld.cli train --config configs/tiny_synthetic.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from . import echo, error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="yaml or json file with TrainConfig fields (see --list-fields)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field (value parsed as yaml); repeatable",
    )
    parser.add_argument("--list-fields", action="store_true", help="print every config field with its help and exit")
    parser.add_argument("--print-config", action="store_true", help="print the validated config as json and exit")


def run(args: argparse.Namespace) -> int:
    from theworld.training import Trainer, config_fields, load_train_config

    if args.list_fields:
        for name, help_text, default in config_fields():
            echo(f"{name} (default {default!r}): {help_text}")
        return 0
    if args.config is None and not args.overrides:
        return error("pass --config FILE (yaml or json); `theworld train --list-fields` lists the fields.")
    try:
        config = load_train_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        return error(f"invalid config: {e}")
    if args.print_config:
        echo(json.dumps(dataclasses.asdict(config), indent=2))
        return 0
    trainer = Trainer(config)
    summary = trainer.train()
    if trainer.is_main:
        echo(
            f"trained {summary['global_step']} steps; final loss {summary['final_loss']:.4f}; "
            f"checkpoint {summary['final_checkpoint']}"
            + (f"; eval accuracy {summary['eval']['accuracy']:.3f}" if summary.get("eval") else "")
        )
    return 0


__all__ = ["add_arguments", "run"]
