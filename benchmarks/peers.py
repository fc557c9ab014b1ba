"""One full training update of the paper's network in snnTorch, SpikingJelly, Norse and lzo-bench,
side by side (the machinery lives in :mod:`lzo_bench.measure.peers`, which ``lzo-bench profile --peers`` uses too).

    pip install -e ".[bench]"
    python benchmarks/peers.py --threads 1            # N-MNIST shape; --shape shd, --json, --only
"""

import sys

from lzo_bench.measure.peers import main

if __name__ == "__main__":
    sys.exit(main())
