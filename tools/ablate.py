#!/usr/bin/env python
"""Recipe ablation over seeds, scored on a held-out test set; see --help. Logic: czii_kit.cli.ablate / czii_kit.study."""
import sys

from czii_kit.cli.ablate import main

if __name__ == "__main__":
    sys.exit(main())
