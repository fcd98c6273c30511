"""``theworld eval`` (transitional: the arguments and the runner still live in ``theworld.evaluation``)."""

from theworld.evaluation import add_arguments, run

__all__ = ["add_arguments", "run"]
