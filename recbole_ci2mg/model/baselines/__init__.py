"""Baselines of the paper's comparison, one model per file; listed in :mod:`recbole_ci2mg.registry`."""
