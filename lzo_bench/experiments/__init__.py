"""Experiments over many runs: ``recipe`` (the recipes in ``profiles/*.toml``), ``grid`` (a recipe's
trials, local or on Ray), ``summary`` (the paper-style table), figures (``plots``) and the theory checks.
"""
