#!/usr/bin/env python
"""Build TensorRT engines on the GPU they will run on. Same as `czii build-engines`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("build-engines")

if __name__ == "__main__":
    sys.exit(main())
