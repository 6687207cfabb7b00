#!/usr/bin/env python
"""Predict a split and write submission.csv; see --help. Logic: czii_kit.cli.predict."""
import sys

from czii_kit.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
