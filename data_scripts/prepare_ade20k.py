#!/usr/bin/env python
"""Prepare ADE20K's SceneParsing release (ADEChallengeData2016.zip, 150 classes).

    python data_scripts/prepare_ade20k.py --root data/ade20k [--from-zip ZIP] [--download-dir DIR]

Run with --help for every option; the implementation (and its documentation) is
``encnet_lite.data.prepare_ade20k``.
"""

import sys
from pathlib import Path

try:
    from encnet_lite.data.prepare_ade20k import main, prepare_ade20k  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from encnet_lite.data.prepare_ade20k import main, prepare_ade20k  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
