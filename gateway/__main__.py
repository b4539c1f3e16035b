"""``python -m psvn.gateway --config FILE``: run one gateway (what ``psvn gateway run`` does)."""

import sys

from psvn.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["gateway", "run", *sys.argv[1:]]))
