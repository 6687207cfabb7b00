#!/usr/bin/env python
"""Threshold-picking rules compared on a study's models; see --help. Logic: czii_kit.cli.threshold_rules / czii_kit.study."""
import sys

from czii_kit.cli.threshold_rules import main

if __name__ == "__main__":
    sys.exit(main())
