#!/usr/bin/env python
"""Prepare PASCAL VOC 2012 (+ SBD train_aug with --sbd) -> label PNGs.

    python data_scripts/prepare_voc.py --root data/voc [--sbd] [--download-dir DIR] [--skip-download]

Run with --help for every option; the implementation (and its documentation) is
``encnet_lite.data.prepare_voc``.
"""

import sys
from pathlib import Path

try:
    from encnet_lite.data.prepare_voc import main, prepare_voc  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from encnet_lite.data.prepare_voc import main, prepare_voc  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
