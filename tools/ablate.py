#!/usr/bin/env python
"""Recipe study: arms x seeds scored on a held-out test set. Same as `czii study`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("study")

if __name__ == "__main__":
    sys.exit(main())
