"""``theworld push`` (transitional: the arguments and the runner still live in ``theworld.hub``)."""

from theworld.hub import add_arguments, run

__all__ = ["add_arguments", "run"]
