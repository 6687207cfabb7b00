#!/usr/bin/env python
"""Check every GPU path and print one table. Same as `czii gpu-check`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("gpu-check")

if __name__ == "__main__":
    sys.exit(main())
