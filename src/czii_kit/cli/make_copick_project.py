"""czii make-copick-project --data ROOT --out DIR [--split train|test]   (= python tools/make_copick_project.py)

Writes a copick project over a Kaggle-layout directory: DIR/copick_<split>.json (a filesystem copick
config whose static root is ROOT/<split>/static, read in place) and DIR/overlay_<split>/ with the
competition's <particle>.json picks linked under the <user>_<session>_<particle>.json names copick
expects. Nothing in ROOT is copied or changed.
"""
from __future__ import annotations

import argparse

from czii_kit.cli import args as shared
from czii_kit.cli.common import exit_on_user_error
from czii_kit.data import layout


def parse_args(argv=None) -> argparse.Namespace:
    p = shared.parser("A copick project over a Kaggle-layout directory (nothing copied)")
    p.add_argument("--data", required=True, help="competition directory (the one holding train/ and test/)")
    p.add_argument("--out", required=True, help="folder for the copick config and its overlay")
    p.add_argument("--split", default="train", choices=layout.SPLITS,
                   help="which split the project covers (default %(default)s)")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> int:
    from czii_kit.data.copick import KAGGLE_PICKS_SESSION, KAGGLE_PICKS_USER, make_copick_project

    args = parse_args(argv)
    config = make_copick_project(args.data, args.out, args.split)
    print(f"wrote {config}: pass it as --data to any tool; the competition's picks are user "
          f"{KAGGLE_PICKS_USER!r}, session {KAGGLE_PICKS_SESSION!r}")
    return 0
