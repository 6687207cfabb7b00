#!/usr/bin/env python
"""Pack checkpoints and wheels into a Kaggle dataset folder; see --help. Logic: czii_kit.cli.pack_kaggle_dataset."""
import sys

from czii_kit.cli.pack_kaggle_dataset import main

if __name__ == "__main__":
    sys.exit(main())
