#!/usr/bin/env python
"""Score a submission with the exact Kaggle metric. Same as `czii score`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("score")

if __name__ == "__main__":
    sys.exit(main())
