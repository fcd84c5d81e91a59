"""The `station` command for the tests' subprocesses: `python tests/station_cli.py ARGS` is `station ARGS`
with the test network `tinynet` registered (tests/tinynet.py), so a subprocess can load the tiny models
the tests make. It lives in tests/ and is never installed: a station outside the test suite refuses them.

The registration waits until the command itself imports `station.network` (only commands that load a
model do): registering at once would import torch into every command, and `check-config` or `trace
export` would take seconds instead of a fraction of one, in the tests as nowhere else.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parent


class RegisterTinyNetOnImport(importlib.abc.MetaPathFinder):
    """Finds `station.network` like the normal path finder does, and registers tinynet once it has run."""

    def find_spec(self, name: str, path, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name != "station.network":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            sys.path.append(str(TESTS))
            import tinynet

            tinynet.register()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  (this spec's loader only)
        return spec


if __name__ == "__main__":
    # Python put this folder first on sys.path; its `station/` test folder would shadow the package.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TESTS]
    sys.meta_path.insert(0, RegisterTinyNetOnImport())
    from station.cli import main

    sys.exit(main())
