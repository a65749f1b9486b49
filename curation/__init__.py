"""Distributed data curation for generative-model training data (Kandinsky 5.0 pipeline)."""

__version__ = "0.1.0"
