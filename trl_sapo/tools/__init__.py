"""User tooling shipped with the library: offline settings and plots (``pip install 'trl-sapo[plots]'``)."""

from __future__ import annotations

import importlib


def import_pyplot():
    """`matplotlib.pyplot` with the non-interactive default backend left alone; a clear error when matplotlib is
    missing (it is the optional `plots` extra, not a dependency of the trainer)."""
    try:
        return importlib.import_module("matplotlib.pyplot")
    except ModuleNotFoundError as err:
        if err.name != "matplotlib":
            raise
        raise ModuleNotFoundError(
            "Plotting needs matplotlib, an optional dependency of trl-sapo: pip install 'trl-sapo[plots]'",
            name="matplotlib",
        ) from err
