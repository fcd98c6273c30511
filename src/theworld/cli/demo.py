"""``theworld demo`` (transitional: the arguments and the runner still live in ``theworld.demo``)."""

from theworld.demo import add_arguments, run

__all__ = ["add_arguments", "run"]
