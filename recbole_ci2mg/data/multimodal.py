"""RecBole ``Dataset`` with item features per modality and their observed masks."""

import os

import numpy as np
import torch
from recbole.data.dataset import Dataset
from recbole.utils import set_color

from recbole_ci2mg.compat import check_benchmark_split
from recbole_ci2mg.data.features import (
    align_rows,
    mean_impute,
    parse_modality_specs,
    read_feature_matrix,
)
from recbole_ci2mg.data.masks import (
    check_mask_settings,
    check_mask_source,
    draw_observed_masks,
    load_masks,
    mask_file_name,
    save_masks,
)
from recbole_ci2mg.data.new_items import (
    check_new_item_settings,
    draw_new_items,
    keep_or_check_saved,
    new_item_file_name,
)

EMBEDDED_DATASET = "ml-100k-mm"


class MultimodalDataset(Dataset):
    r"""A RecBole ``Dataset`` that also holds item features, one matrix per modality.

    After RecBole has loaded and remapped the interactions, each modality in
    ``config["modalities"]`` is read, its rows are aligned to RecBole's internal
    item ids (id 0 is padding), and an observed mask is formed from the items
    the feature file really covers and a simulated mask (drawn from
    ``missing_rate``, ``missing_mode`` and ``mask_seed``, or read from
    ``mask_file``). Models read, per modality name:

    - ``modality_features[name]``: ``[n_items, d_m]`` float tensor, unobserved
      rows filled with the mean of observed rows;
    - ``modality_observed[name]``: ``[n_items]`` bool tensor.

    The split datasets RecBole builds are shallow copies, so they share these.
    With no ``modalities`` configured it behaves as RecBole's ``Dataset`` plus
    the benchmark-split check of :func:`recbole_ci2mg.compat.check_benchmark_split`
    and the new-item setting.

    New-item setting (``new_item_rate``, ``new_item_seed``, every general model
    alike): once RecBole has built the split, the training interactions of the
    items drawn by :func:`recbole_ci2mg.data.new_items.draw_new_items` are
    removed from the training split; valid and test keep theirs. Every split
    dataset then holds

    - ``new_items``: ``[n_items]`` bool tensor, the drawn items;
    - ``cold_items``: ``[n_items]`` bool tensor, the items with no interaction
      in the training split the model sees (the new items, plus any item the
      split gives none; padding id 0 excluded), which the trainer's segment
      recall reads (:class:`recbole_ci2mg.trainer.PerUserScoresMixin`).
    """

    def _from_scratch(self):
        super()._from_scratch()
        self._load_modalities()

    def _download(self):
        # RecBole calls this when the dataset folder is missing. The embedded
        # default is built offline from the ml-100k copy inside recbole.
        if self.dataset_name == EMBEDDED_DATASET:
            from dataset_prep.ml100k import build_ml100k_mm

            self.logger.info(f"Building the embedded dataset {EMBEDDED_DATASET} in {self.dataset_path}")
            build_ml100k_mm(os.path.dirname(os.path.normpath(self.dataset_path)))
            return
        raise ValueError(
            f"Dataset folder {self.dataset_path} does not exist. Convert the published "
            f"files first: python -m dataset_prep {self.dataset_name} --src <folder> "
            f"--out <folder> (it also writes properties/dataset/{self.dataset_name}.yaml), "
            f"or point data_path at the folder that holds {self.dataset_name}/."
        )

    def build(self):
        if self.benchmark_filename_list is not None:
            check_benchmark_split(self)
        datasets = super().build()
        # After the split, never before: dropping rows before it would shift the
        # benchmark split's boundaries (see check_benchmark_split).
        return self._remove_new_items(datasets)

    def _remove_new_items(self, datasets):
        r"""Remove the new items' interactions from the training split (``datasets[0]``).

        The removed interactions are dropped, not hidden: they are neither
        trained on nor excluded from the ranking (RecBole excludes the items of
        the training split a user has), as if the items had not existed yet
        when the training interactions were made.
        """
        new_item_rate = self._setting("new_item_rate", 0.0)
        new_item_seed = self._setting("new_item_seed", 2024)
        check_new_item_settings(new_item_rate, new_item_seed)
        train = datasets[0]
        degree = self._item_degree(train)
        new = np.zeros(self.item_num, dtype=bool)
        self.new_item_path = None
        if new_item_rate > 0:
            tokens = [str(t) for t in self.field2id_token[self.iid_field]]
            new[1:] = draw_new_items(tokens[1:], degree[1:], new_item_rate, new_item_seed)
            drawn = np.flatnonzero(new)
            path = os.path.join(
                self.dataset_path, "masks", new_item_file_name(self.dataset_name, new_item_rate, new_item_seed)
            )
            try:
                reused = keep_or_check_saved(path, [tokens[i] for i in drawn], degree[drawn])
                self.new_item_path = path
            except OSError as error:
                self.logger.warning(f"Could not save the new items to {path}: {error}")
                reused = False
            kept = ~new[train.inter_feat[self.iid_field].numpy()]
            datasets[0] = train.copy(train.inter_feat[torch.from_numpy(kept)])
            self._log_new_items(train, datasets, new, reused)
        cold = self._item_degree(datasets[0]) == 0
        cold[0] = False  # padding
        for dataset in [self, *datasets]:
            dataset.new_items = torch.from_numpy(new)
            dataset.cold_items = torch.from_numpy(cold)
        return datasets

    def _item_degree(self, dataset):
        return np.bincount(dataset.inter_feat[self.iid_field].numpy(), minlength=self.item_num)

    def _log_new_items(self, train_before, datasets, new, reused):
        def has_users(dataset):
            return np.bincount(dataset.inter_feat[self.uid_field].numpy(), minlength=self.user_num) > 0

        warm = self._item_degree(train_before)[1:] > 0
        removed = len(train_before) - len(datasets[0])
        lost_all = int((has_users(train_before) & ~has_users(datasets[0])).sum())
        evaluated = [
            f"{name} {int(new[d.inter_feat[self.iid_field].numpy()].sum())} of {len(d)}"
            for name, d in zip(("valid", "test"), datasets[1:])
        ]
        where = f"{'checked against' if reused else 'saved to'} {self.new_item_path}" if self.new_item_path else "not saved"
        lines = [
            set_color("New items", "pink") + f" (new_item_rate {self._setting('new_item_rate', 0.0):g}, "
            f"new_item_seed {self._setting('new_item_seed', 2024)}; {where})",
            f"  {int(new.sum())} of the {int(warm.sum())} items with training interactions lose them "
            f"({removed} of {len(train_before)} training interactions removed); "
            f"{int((~warm).sum())} items had none already",
            f"  interactions with new items kept for evaluation: {', '.join(evaluated)}",
            f"  users whose every training interaction is removed: {lost_all}",
        ]
        self.new_item_summary = "\n".join(lines)
        self.logger.info(self.new_item_summary)

    def _load_modalities(self):
        specs = parse_modality_specs(self.config["modalities"], self.dataset_path)
        self.modality_names = [spec.name for spec in specs]
        self.modality_features, self.modality_observed = {}, {}
        if not specs:
            return
        missing_rate = self._setting("missing_rate", 0.0)
        missing_mode = self._setting("missing_mode", "independent")
        mask_seed = self._setting("mask_seed", 2023)
        check_mask_settings(missing_rate, missing_mode, mask_seed)
        allow_partial = self._setting("allow_partial_features", False)
        if not isinstance(allow_partial, bool):
            raise ValueError(
                f"Config key allow_partial_features = {allow_partial!r} must be True or False."
            )

        item_tokens = [str(t) for t in self.field2id_token[self.iid_field][1:]]
        raw, present = {}, {}
        for spec in specs:
            raw[spec.name], present[spec.name] = align_rows(
                spec, read_feature_matrix(spec), item_tokens, allow_partial
            )

        observed = self._observed_masks(item_tokens, present, missing_rate, missing_mode, mask_seed)
        for name in self.modality_names:
            filled = mean_impute(raw[name], observed[name])
            padded = np.vstack([np.zeros((1, filled.shape[1]), np.float32), filled])
            self.modality_features[name] = torch.from_numpy(padded)
            self.modality_observed[name] = torch.from_numpy(np.concatenate([[False], observed[name]]))
        self._log_missingness(present, observed)

    def _setting(self, key, default):
        # The defaults of properties/overall.yaml, for configs built without it.
        value = self.config[key]
        return default if value is None else value

    def _observed_masks(self, item_tokens, present, missing_rate, missing_mode, mask_seed):
        r"""Observed = really present in the feature file AND kept by the mask.

        A simulated mask is drawn on top of real incompleteness: it is drawn over
        all items, independently of which rows the files have, so the same
        ``mask_seed`` drops the same items whatever the feature files hold.
        """
        mask_file = self.config["mask_file"]
        check_mask_source(mask_file, missing_rate)
        if mask_file:
            path = mask_file if os.path.isabs(mask_file) else os.path.join(self.dataset_path, mask_file)
            kept = load_masks(path, item_tokens, self.modality_names)
            self.mask_path = path
        else:
            kept = draw_observed_masks(item_tokens, self.modality_names, missing_rate, missing_mode, mask_seed)
            self.mask_path = os.path.join(
                self.dataset_path,
                "masks",
                mask_file_name(self.dataset_name, missing_rate, missing_mode, mask_seed),
            )
        observed = {name: present[name] & kept[name] for name in self.modality_names}
        if not mask_file:
            try:
                save_masks(self.mask_path, item_tokens, observed)
            except OSError as error:
                self.logger.warning(f"Could not save the mask to {self.mask_path}: {error}")
                self.mask_path = None
        return observed

    def _log_missingness(self, present, observed):
        n_items = len(next(iter(observed.values())))
        lines = [set_color("Modalities", "pink") + f" (mask: {self.mask_path})"]
        for name in self.modality_names:
            lines.append(
                f"  {name}: dim {self.modality_features[name].shape[1]}, "
                f"absent from the feature file {int((~present[name]).sum())} items, "
                f"missing in all {(~observed[name]).mean():.2%} of {n_items} items"
            )
        no_content = ~np.any(np.stack([observed[name] for name in self.modality_names]), axis=0)
        lines.append(f"  items with no content at all: {no_content.mean():.2%}")
        self.modality_summary = "\n".join(lines)
        self.logger.info(self.modality_summary)

    def __str__(self):
        text = super().__str__()
        if self.modality_names:
            text += "\n" + self.modality_summary
        return text


def require_modalities(dataset, model_name):
    r"""The modality names of ``dataset``, for a model that cannot work without content.

    Raises a clear error when the dataset declares no modality (or is not a
    :class:`MultimodalDataset`), instead of failing later on an empty list.
    """
    names = list(getattr(dataset, "modality_names", []))
    if not names:
        raise ValueError(
            f"{model_name} needs item modalities (at least one), but the dataset declares none: "
            f"set `modalities` in the dataset's YAML (see properties/overall.yaml), or run an "
            f"ID-only model such as LightGCN."
        )
    return names
