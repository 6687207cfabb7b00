#!/usr/bin/env python
"""Benchmark: same as `czii bench scale`; see --help."""
import sys

from czii_kit.cli.bench import tool

main = tool("scale")

if __name__ == "__main__":
    sys.exit(main())
