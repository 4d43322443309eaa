"""Models of this package; each is listed by name in :mod:`recbole_ci2mg.registry`."""

from recbole_ci2mg.model.ci2mg import CI2MG, LightGCNM

__all__ = ["CI2MG", "LightGCNM"]
