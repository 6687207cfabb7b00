#!/usr/bin/env python
"""ONNX / TensorRT export with a parity check. Same as `czii export`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("export")

if __name__ == "__main__":
    sys.exit(main())
