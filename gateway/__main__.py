"""``python -m psvn.gateway --config FILE``: run one gateway (what ``psvn gateway run`` does)."""

import sys

from psvn.gateway.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
