#!/usr/bin/env python
"""Exercise every CUDA path the Kaggle notebook can take and print one table; see --help. Logic: czii_kit.selfcheck."""
import sys

from czii_kit.selfcheck import main

if __name__ == "__main__":
    sys.exit(main())
