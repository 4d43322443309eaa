"""Datasets whose published layout and feature files ``dataset_prep`` knows.

Any other name converts too, given ``--layout``; its features then come only
from ``--feature``.
"""

from dataclasses import dataclass, field
from typing import Dict


@dataclass(frozen=True)
class KnownDataset:
    """How a known dataset is published.

    Args:
        layout: the layout its interactions come in (a key of ``layouts.LAYOUTS``).
        features: modality name -> feature file name inside the source directory.
    """

    layout: str
    features: Dict[str, str] = field(default_factory=dict)


KNOWN_DATASETS: Dict[str, KnownDataset] = {
    # The TikTok release of MMSSL / DiffMM; its 768-d text file is not available.
    "tiktok": KnownDataset("diffmm", {"v": "image_feat.npy", "a": "audio_feat.npy"}),
    "baby": KnownDataset("mmssl"),
    "clothing": KnownDataset("mmrec"),
    # Keyword strings encoded with all-MiniLM-L6-v2 (384-d), row i = item i.
    "sports": KnownDataset("mmrec", {"t": "text_feat.npy"}),
}
