#!/usr/bin/env python
"""Z-slice PNGs and labels for the YOLO branch. Same as `czii make-yolo-dataset`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("make-yolo-dataset")

if __name__ == "__main__":
    sys.exit(main())
