"""CI2MG and multimodal baselines as a RecBole plugin.

Entry points: :mod:`recbole_ci2mg.quick_start` (training, groups, tuning,
checkpoint reload), :class:`recbole_ci2mg.data.MultimodalDataset` (item
features and missing-modality masks), :mod:`recbole_ci2mg.registry`
(model names).
"""
