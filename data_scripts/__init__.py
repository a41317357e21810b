"""Command-line entry points that download and convert the real datasets.

Each script is a thin wrapper: the code lives in ``encnet_lite.data.prepare_*`` so that a
pip-installed package (e.g. on Colab) can run it as ``python -m encnet_lite.data.prepare_*``.
"""
