"""Experiments over many runs: ``reproduce`` (recipes from ``profiles/*.toml``, the local and Ray grids,
the summary), figures (``plots``) and the theory checks.
"""
