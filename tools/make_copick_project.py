#!/usr/bin/env python
"""A copick project over a Kaggle-layout directory; see --help. Logic: czii_kit.cli.make_copick_project."""
import sys

from czii_kit.cli.make_copick_project import main

if __name__ == "__main__":
    sys.exit(main())
