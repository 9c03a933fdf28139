"""Checkout tooling, not part of the installed `trl_sapo` package: the offline SmolLM2 conversion into `models/`
(``python -m tools.models``), tiny test models, the copy task and the small-sample statistics of the studies.

Run from the repository root (``python -m tools.models``); scripts in scripts/ and benchmarks/ put the root on
`sys.path` themselves.
"""
