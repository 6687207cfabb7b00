#!/usr/bin/env python
"""Benchmark: same as `czii bench infer`; see --help."""
import sys

from czii_kit.cli.bench import tool

main = tool("infer")

if __name__ == "__main__":
    sys.exit(main())
