"""``theworld tiny`` (transitional: the arguments and the runner still live in ``theworld.tiny``)."""

from theworld.tiny import add_arguments, run

__all__ = ["add_arguments", "run"]
