"""`python -m train --config configs/demo.yaml [key=value ...]` (or under torchrun)."""

import sys

from train.trainer import main

if __name__ == "__main__":
    sys.exit(main())
