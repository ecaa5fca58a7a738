"""Minnow: distill a large model into a small one, export it for CPU and phone, and show the result."""

__version__ = "0.1.0"
