"""Training a network: ``train`` (the update loop), ``config`` (``TrainConfig`` and its checks),
``limits`` (the options' limits), ``reporter`` (the ``Reporter`` base with no-op hooks),
``run_folder`` (the run folder, its lock, records and ``--resume``) and ``checkpoint``.
"""
