#!/usr/bin/env python
"""Export checkpoints to ONNX / TensorRT with a parity check; see --help. Logic: czii_kit.cli.export."""
import sys

from czii_kit.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
