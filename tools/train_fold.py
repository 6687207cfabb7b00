#!/usr/bin/env python
"""Train one fold (leave-one-tomogram-out). Same as `czii train`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("train")

if __name__ == "__main__":
    sys.exit(main())
