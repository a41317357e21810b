"""encnet_lite: a small, readable PyTorch implementation of EncNet."""

__version__ = "0.1.0"
