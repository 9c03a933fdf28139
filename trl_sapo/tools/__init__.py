"""Tooling around the library: offline models (``python -m trl_sapo.tools.models``), plots, test helpers."""
