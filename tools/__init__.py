"""Checkout tooling, not part of the installed `trl_sapo` package: the offline SmolLM2 conversion into `models/`
(``python -m tools.models``), tiny test models, the copy task and the small-sample statistics of the studies.

Run from the repository root as packages (``python -m tools.models``, ``python -m benchmarks.learning``,
``python -m scripts.demo``): the root is then on the import path, and nothing edits `sys.path` (pytest adds the root
through ``pythonpath`` in pyproject.toml).
"""
