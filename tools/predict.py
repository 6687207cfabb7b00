#!/usr/bin/env python
"""Predict a split: submission.csv (+ copick picks, STAR files). Same as `czii predict`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("predict")

if __name__ == "__main__":
    sys.exit(main())
