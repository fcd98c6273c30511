"""``theworld train`` (transitional: the arguments and the runner still live in ``theworld.training``)."""

from theworld.training import add_arguments, run

__all__ = ["add_arguments", "run"]
