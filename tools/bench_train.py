#!/usr/bin/env python
"""Benchmark: same as `czii bench train`; see --help."""
import sys

from czii_kit.cli.bench import tool

main = tool("train")

if __name__ == "__main__":
    sys.exit(main())
