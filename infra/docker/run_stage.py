"""Entrypoint of the stages image: run ``python -m $STAGE_MODULE`` (one of ``stages.*``).

The controller's catalog runs an image's own entrypoint (a service gives ``image`` or ``command``, not
both), so one image serves the five demo stages and each service names its module in ``env``.
Arguments pass through (e.g. ``--workspace DIR``).
"""

from __future__ import annotations

import os
import re
import runpy
import sys


def main() -> None:
    module = os.environ.get("STAGE_MODULE", "")
    if not re.fullmatch(r"stages\.[a-z_][a-z0-9_]*", module):
        print(f"error: STAGE_MODULE must name a stage module (stages.<name>), got {module!r}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv[0] = module
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
