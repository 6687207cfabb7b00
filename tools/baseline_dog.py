#!/usr/bin/env python
"""Difference-of-Gaussians baseline on a fold's held-out run. Same as `czii baseline`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("baseline")

if __name__ == "__main__":
    sys.exit(main())
