#!/usr/bin/env python
"""Pretrain a starting model on the kit's simulator. Same as `czii pretrain`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("pretrain")

if __name__ == "__main__":
    sys.exit(main())
