#!/usr/bin/env python
"""Pack checkpoints and wheels as a Kaggle dataset. Same as `czii pack`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("pack")

if __name__ == "__main__":
    sys.exit(main())
