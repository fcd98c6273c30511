"""``theworld demo``: the offline end-to-end demonstration that TheWorld uses its world tokens (`theworld.demo`).

Example::

    theworld demo --out demo_out            # about 2.5 minutes on 2 CPU cores

Prints a results table; writes ``report.md``, ``results.json`` and ``details.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing

from . import echo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from theworld.configuration_theworld import (
        PROJECTION_ARCHITECTURES,
        WORLD_ATTENTIONS,
        WORLD_PLACEMENTS,
        WORLD_PROJECTION_MODES,
    )
    from theworld.demo import DemoOptions

    choices = {
        "projection_mode": WORLD_PROJECTION_MODES,
        "projection_architecture": PROJECTION_ARCHITECTURES,
        "world_placement": WORLD_PLACEMENTS,
        "world_attention": WORLD_ATTENTIONS,
    }
    hints = typing.get_type_hints(DemoOptions)
    for f in dataclasses.fields(DemoOptions):
        kind = next((t for t in (int, float, str) if t in (hints[f.name], *typing.get_args(hints[f.name]))), str)
        default = "" if f.default is None else f" (default {f.default})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=kind, default=f.default, choices=choices.get(f.name),
            help=f.metadata["help"] + default,
        )


def run(args: argparse.Namespace) -> int:
    from theworld.demo import DemoOptions, run_demo

    options = DemoOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoOptions)})
    outcome = run_demo(options, progress=echo)
    results, details = outcome["results"], outcome["details"]
    targets = details["targets"]
    echo()
    echo(f"{'':<44}accuracy")
    echo(f"{'majority class':<44}{results['majority_rate']:.3f}")
    echo(f"{'Gemma-only baseline (' + options.baseline_preset + ')':<44}{results['baseline_accuracy']:.3f}")
    echo(f"{'TheWorld (' + options.preset + ')':<44}{results['theworld_accuracy']:.3f}")
    echo(f"{'TheWorld, world features zeroed':<44}{results['ablated_accuracy']:.3f}")
    echo(f"{'TheWorld, world features shuffled':<44}{results['shuffled_accuracy']:.3f}")
    echo(f"{'TheWorld, generation mode':<44}{details['theworld_generate_accuracy']:.3f}")
    echo(f"reload with AutoModel (theworld blocked): {'identical' if results['reload_identical'] else 'DIFFERENT'}")
    echo(
        "checks: "
        + ", ".join(f"{name} {'passed' if ok else 'FAILED'}" for name, ok in targets.items())
        + f", reload {'passed' if results['reload_identical'] else 'FAILED'}"
    )
    echo(f"wrote {outcome['report']}, {os.path.join(details['out'], 'results.json')} ({outcome['seconds']:.0f} s)")
    return 0


__all__ = ["add_arguments", "run"]
