#!/usr/bin/env python
"""Compare threshold-picking rules on a study's models. Same as `czii threshold-rules`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("threshold-rules")

if __name__ == "__main__":
    sys.exit(main())
