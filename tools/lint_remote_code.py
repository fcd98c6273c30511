"""Lint the remote-code files that transformers' structure linter does not recognise by name.

``mlinter`` (PyPI ``transformers-mlinter``) checks files named ``modeling_*``, ``configuration_*`` and
``processing_*``. TheWorld ships three more code files next to every checkpoint (``world_encoder_theworld.py``,
``rollout_theworld.py``, ``checkpoint_theworld.py``); each is copied into a temporary folder as
``modeling_theworld_<name>.py``, beside a copy of ``configuration_theworld.py`` (which they import), and linted as a
modeling file. Any violation fails (exit status 1), with mlinter's report.

    python tools/lint_remote_code.py            # the three files of src/theworld
    python tools/lint_remote_code.py FILE ...   # other files
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "theworld")
FILES = ("world_encoder_theworld.py", "rollout_theworld.py", "checkpoint_theworld.py")


def lint(paths: list[str]) -> int:
    """Run mlinter on each file as a modeling file; return the number of files with violations."""
    failed = 0
    with tempfile.TemporaryDirectory(prefix="theworld-lint-") as tmp:
        shutil.copyfile(os.path.join(PACKAGE, "configuration_theworld.py"), os.path.join(tmp, "configuration_theworld.py"))
        for path in paths:
            name = os.path.basename(path).removesuffix("_theworld.py").removesuffix(".py")
            target = os.path.join(tmp, f"modeling_theworld_{name}.py")
            shutil.copyfile(path, target)
            proc = subprocess.run(
                [sys.executable, "-m", "mlinter", "--no-progress", "--no-cache", target], capture_output=True, text=True
            )
            report = (proc.stdout + proc.stderr).replace(target, path).strip()
            ok = proc.returncode == 0 and "violation" not in report
            print(f"{path}: {'OK' if ok else 'FAILED'}")
            if not ok:
                print(report)
                failed += 1
    return failed


def main(argv: list[str] | None = None) -> int:
    paths = list(argv if argv is not None else sys.argv[1:]) or [os.path.join(PACKAGE, f) for f in FILES]
    return 1 if lint(paths) else 0


if __name__ == "__main__":
    sys.exit(main())
