#!/usr/bin/env python
"""Build TensorRT engines for checkpoints on this GPU, before the timed run; see --help. Logic: czii_kit.cli.build_engines."""
import sys

from czii_kit.cli.build_engines import main

if __name__ == "__main__":
    sys.exit(main())
