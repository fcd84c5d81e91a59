"""Files the station reads from its project checkout: the example configs, the unit file, the shipped model.

`config/`, `systemd/`, `models/` and `docs/` sit beside the `station` package in the repository, and
the supported installation is an editable one (`pip install -e CHECKOUT`), which keeps them there.
A plain `pip install .` copies the Python packages only; a command that then needs one of these files
gets `CheckoutFileMissing`, whose message says what is missing and how to install instead, and the
command turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
EDITABLE_INSTALL_HINT = "install the project checkout in editable mode: pip install -e /path/to/checkout"


class CheckoutFileMissing(FileNotFoundError):
    """A file of the project checkout is not beside the installed `station` package."""


def checkout_path(relative: str) -> Path:
    """The path of `relative` in the checkout, whether or not it exists (for defaults and help texts)."""
    return CHECKOUT / relative


def checkout_file(relative: str, *, needed_for: str) -> Path:
    """The existing file `relative` of the checkout; raise CheckoutFileMissing naming the fix otherwise."""
    path = CHECKOUT / relative
    if path.exists():
        return path
    raise CheckoutFileMissing(
        f"{needed_for} needs {relative} from the project checkout, and there is none beside the installed "
        f"package ({CHECKOUT}): this looks like a plain `pip install .`, which ships the Python code only; "
        f"{EDITABLE_INSTALL_HINT}")
