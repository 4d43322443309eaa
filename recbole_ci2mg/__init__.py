"""CI2MG and multimodal baselines as a RecBole plugin.

Entry points: :mod:`recbole_ci2mg.quick_start` (training, groups, tuning,
checkpoint reload), :class:`recbole_ci2mg.data.MultimodalDataset` (item
features and missing-modality masks), :mod:`recbole_ci2mg.registry`
(model names).
"""

from recbole_ci2mg.compat import (
    patch_chained_fillna,
    patch_config_numpy_aliases,
    patch_dok_update,
    patch_sequence_lengths,
)

# Before any submodule builds a RecBole Config or graph (no-ops on the old stack).
patch_config_numpy_aliases()
patch_dok_update()
patch_chained_fillna()
patch_sequence_lengths()
