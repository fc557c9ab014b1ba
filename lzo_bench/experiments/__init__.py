"""Experiments over many runs: ``recipe`` (the TOML recipes of ``profiles/``), ``grid``
(their runs, locally or on Ray), ``summary`` (the paper-style table), ``plots`` (the figures) and
``theory_checks`` (what ``lzo-bench theory`` computes).
"""
