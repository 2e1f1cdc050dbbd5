"""Thin entry points: each parses a few flags, builds a config and calls the
library (e.g. `python -m experiments.odir --fold 0`)."""
