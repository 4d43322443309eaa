"""Multimodal data layer: item features aligned to RecBole ids, and missing-modality masks."""

from recbole_ci2mg.data.multimodal import EMBEDDED_DATASET, MultimodalDataset, require_modalities

__all__ = ["EMBEDDED_DATASET", "MultimodalDataset", "require_modalities"]
