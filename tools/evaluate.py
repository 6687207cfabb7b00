#!/usr/bin/env python
"""Cross-validation report; see `python tools/evaluate.py --help`. Logic: czii_kit.cli.evaluate."""
import sys

from czii_kit.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
