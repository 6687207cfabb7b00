#!/usr/bin/env python
"""Train one fold; see `python tools/train_fold.py --help`. Logic: czii_kit.cli.train_fold."""
import sys

from czii_kit.cli.train_fold import main

if __name__ == "__main__":
    sys.exit(main())
