"""Models of this package; each is listed by name in :mod:`recbole_ci2mg.registry`."""

from recbole_ci2mg.model.ci2mg import CI2MG, LightGCNM
from recbole_ci2mg.model.ci2mg_structure import CI2MGS

__all__ = ["CI2MG", "CI2MGS", "LightGCNM"]
