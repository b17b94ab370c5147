"""The data sets live in bsvit_int.datasets (they need no torch); this name stays for callers."""
from bsvit_int.datasets import DATASETS, Split, digits, load, mnist5k  # noqa: F401
