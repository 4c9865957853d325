"""``python -m stimage_sd`` runs the command line."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a spawned worker process imports it (stimage_sd._isolate)
    sys.exit(main())
