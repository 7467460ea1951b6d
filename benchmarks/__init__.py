"""Benchmarks of rfjax against the obvious TensorFlow ways (see ``benchmarks/run.py``)."""
