"""Stand-in for the parts of torchvision the authors' AFB-URR code imports.

Not torchvision: written for running the reference implementation in
benchmarks/compare_reference.py only. See ../README.md.
"""
from . import models, transforms  # noqa: F401

__version__ = "0.0.0+afburr-shim"
