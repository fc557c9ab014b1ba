"""Thin entry point: ``python cli.py …`` is the same as ``lzo-bench …`` from a checkout."""

from lzo_bench.cli.entry import main

if __name__ == "__main__":
    main()
