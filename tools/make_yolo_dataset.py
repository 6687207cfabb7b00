#!/usr/bin/env python
"""Write a YOLO z-slice dataset; see `python tools/make_yolo_dataset.py --help`. Logic: czii_kit.cli.make_yolo_dataset."""
import sys

from czii_kit.cli.make_yolo_dataset import main

if __name__ == "__main__":
    sys.exit(main())
