"""``python -m theworld.cli``."""

from theworld.cli import main

raise SystemExit(main())
