#!/usr/bin/env python
"""Write a synthetic dataset in the exact competition layout. Same as `czii make-synthetic`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("make-synthetic")

if __name__ == "__main__":
    sys.exit(main())
