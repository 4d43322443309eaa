"""Model names: this package's models, then RecBole's built-ins.

RecBole's ``get_model`` only searches ``recbole.model``; plugin models are
listed here, one line each, and every entry point of this package (training,
groups, tuning, checkpoint reload) resolves names through :func:`get_model`.
"""

from recbole.utils import get_model as recbole_get_model

from recbole_ci2mg.compat import keep_anomaly_mode
from recbole_ci2mg.model import CI2MG, CI2MGS, LightGCNM
from recbole_ci2mg.model.baselines.dgmrec import DGMRec
from recbole_ci2mg.model.baselines.freedom import FREEDOM
from recbole_ci2mg.model.baselines.hccf import HCCF
from recbole_ci2mg.model.baselines.vbpr import VBPR
from recbole_ci2mg.model.baselines.mmgcl import MMGCL
from recbole_ci2mg.model.baselines.mmssl import MMSSL
from recbole_ci2mg.model.baselines.slmrec import SLMRec
from recbole_ci2mg.model.baselines.sibrar import SiBraR
from recbole_ci2mg.model.baselines.milk import MILK
from recbole_ci2mg.model.baselines.simgcl import SimGCL
from recbole_ci2mg.model.baselines.bm3 import BM3

# name on the command line -> model class
PLUGIN_MODELS = {
    "CI2MG": CI2MG,
    "LightGCN-M": LightGCNM,
    "CI2MG-S": CI2MGS,
    "VBPR": VBPR,
    "FREEDOM": FREEDOM,
    "HCCF": HCCF,
    "MMGCL": MMGCL,
    "SLMRec": SLMRec,
    "MMSSL": MMSSL,
    "SiBraR": SiBraR,
    "MILK": MILK,
    "DGMRec": DGMRec,
    "SimGCL": SimGCL,
    "BM3": BM3,
}


def get_model(name):
    """The model class called ``name``: ours first, then RecBole's."""
    if not isinstance(name, str):
        return name
    if name in PLUGIN_MODELS:
        return PLUGIN_MODELS[name]
    # RecBole stores the class name in config["model"]; checkpoints hold that.
    by_class_name = {cls.__name__: cls for cls in PLUGIN_MODELS.values()}
    if name in by_class_name:
        return by_class_name[name]
    try:
        with keep_anomaly_mode():
            return recbole_get_model(name)
    except (ValueError, ImportError, AttributeError):
        ours = ", ".join(sorted(PLUGIN_MODELS)) or "none yet"
        raise ValueError(
            f"Unknown model '{name}'. This package's models: {ours}; RecBole's "
            f"built-ins are named as in recbole.model (e.g. BPR, NGCF, LightGCN, SGL, NCL). "
            f"Names are case-sensitive."
        ) from None
