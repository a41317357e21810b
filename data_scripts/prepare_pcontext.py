#!/usr/bin/env python
"""Prepare PASCAL-Context (VOC 2010 images + 459-class .mat annotations) -> 59-class PNGs.

    python data_scripts/prepare_pcontext.py --root data/pcontext [--download-dir DIR] [--skip-download]

Run with --help for every option; the implementation (and its documentation) is
``encnet_lite.data.prepare_pcontext``.
"""

import sys
from pathlib import Path

try:
    from encnet_lite.data.prepare_pcontext import main, prepare_pcontext  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from encnet_lite.data.prepare_pcontext import main, prepare_pcontext  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
