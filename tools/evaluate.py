#!/usr/bin/env python
"""Cross-validation report and thresholds.json from the fold models. Same as `czii evaluate`; see --help."""
import sys

from czii_kit.cli.main import tool

main = tool("evaluate")

if __name__ == "__main__":
    sys.exit(main())
