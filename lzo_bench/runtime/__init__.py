"""The process and the machine it runs on; imports nothing else of lzo_bench:
``devices`` (the device's name and facts, sync, full-fp32 convolutions), ``threads`` (CPU thread counts),
``signals`` (SIGTERM as Ctrl-C), ``memory`` (freed memory kept for reuse, saved-tensor bytes) and
``fsio`` (atomic file writes).
"""
