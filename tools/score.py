#!/usr/bin/env python
"""Score a submission with the exact Kaggle metric; see `python tools/score.py --help`. Logic: czii_kit.cli.score."""
import sys

from czii_kit.cli.score import main

if __name__ == "__main__":
    sys.exit(main())
