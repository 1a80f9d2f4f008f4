"""xel: cross-language entity linking after Schumacher, Mayfield & Dredze (2021)."""

__version__ = "0.1.0"
