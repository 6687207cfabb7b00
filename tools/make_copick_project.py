#!/usr/bin/env python
"""A copick project over a competition directory. Same as `czii make-copick-project`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("make-copick-project")

if __name__ == "__main__":
    sys.exit(main())
