"""The process and the machine it runs on: devices, CPU threads, signals, freed-memory reuse and atomic file
writes. Imports nothing else of lzo_bench.
"""
