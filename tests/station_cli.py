"""The `station` command for the tests' subprocesses: `python tests/station_cli.py ARGS` is `station ARGS`
with the test network `tinynet` registered (tests/tinynet.py), so a subprocess can load the tiny models
the tests make. It lives in tests/ and is never installed: a station outside the test suite refuses them."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

if __name__ == "__main__":
    # Python put this folder first on sys.path; its `station/` test folder would shadow the package.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TESTS]
    from station.cli import main

    sys.path.append(str(TESTS))
    import tinynet

    tinynet.register()
    sys.exit(main())
