#!/usr/bin/env python
"""A synthetic dataset in the competition layout; see --help. Logic: czii_kit.cli.make_synthetic."""
import sys

from czii_kit.cli.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
