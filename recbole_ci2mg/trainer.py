"""RecBole's trainers, with plain-data checkpoints, per-epoch statistics and per-user scores."""

import inspect
from collections import OrderedDict
from time import perf_counter

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.evaluator import Evaluator
from recbole.evaluator.base_metric import TopkMetric
from recbole.trainer import NCLTrainer, Trainer
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_ci2mg.compat import PlainCheckpointMixin, PrototypeEStepMixin
from recbole_ci2mg.registry import get_model


class EpochStatsMixin:
    r"""Records what a results table needs and RecBole's trainer only logs.

    ``train_epoch_seconds``: wall time of each training epoch (evaluation
    excluded); ``best_epoch``: the epoch whose validation score RecBole kept
    (RecBole's early stopping keeps the latest epoch among equal scores, and
    so does this).
    """

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        start = perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self.train_epoch_seconds.append(perf_counter() - start)
        return loss

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.train_epoch_seconds, self.best_epoch, best = [], None, None

        def record_best(epoch_idx, valid_score):
            nonlocal best
            better = best is None or (
                valid_score >= best if self.valid_metric_bigger else valid_score <= best
            )
            if better:
                best, self.best_epoch = valid_score, epoch_idx
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        return super().fit(train_data, valid_data, verbose, saved, show_progress, record_best)


class PerUserEvaluator(Evaluator):
    r"""RecBole's ``Evaluator`` that also keeps each user's top-k metric values.

    RecBole's top-k metrics compute one row per user (``metric_info``) and
    return only their mean. This evaluator asks the same metric objects for
    those rows, on the same ``rec.topk`` data, so the per-user values are
    RecBole's own and their mean is the reported score.

    ``per_user`` after :meth:`evaluate`: ``"<metric>@<k>"`` -> float array,
    one entry per row of the evaluated data, for every top-k metric and k of
    the config; empty when the config has no top-k metric.
    """

    def __init__(self, config):
        super().__init__(config)
        self.per_user = {}

    def evaluate(self, dataobject):
        self.per_user = {}
        for name, metric in self.metric_class.items():
            if not isinstance(metric, TopkMetric):
                continue
            pos_index, pos_len = metric.used_info(dataobject)
            # Recall, NDCG and MAP need the number of positives; Hit, MRR and
            # Precision take the hit matrix alone.
            wants_pos_len = len(inspect.signature(metric.metric_info).parameters) == 2
            values = metric.metric_info(pos_index, pos_len) if wants_pos_len else metric.metric_info(pos_index)
            for k in metric.topk:
                self.per_user[f"{name}@{k}"] = values[:, k - 1].astype(float)
        return super().evaluate(dataobject)


SEGMENTS = ("cold", "warm")


def segment_hits(scores, positive_u, positive_i, in_segment, k):
    r"""Per user, the hits of the top ``k`` among the positives of each item segment.

    The top ``k`` are taken as RecBole's collector takes them (``torch.topk``
    of the same scores), so the two segments' hits add up to RecBole's.

    Args:
        scores (torch.Tensor): ``[n_users, n_items]``, excluded items at -inf.
        positive_u, positive_i (torch.Tensor): row and item id of each positive.
        in_segment (torch.Tensor): ``[n_items]`` bool, True for the first
            segment (``cold``); the other items are the second (``warm``).

    Returns:
        tuple: ``hits`` ``[n_users, 2, k]`` (hits of each segment within the
        top 1..k, cumulative) and ``positives`` ``[n_users, 2]`` (each
        segment's positives), on the CPU.
    """
    in_segment, positive_u, positive_i = (t.to(scores.device) for t in (in_segment, positive_u, positive_i))
    _, top = torch.topk(scores, k, dim=-1)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[positive_u, positive_i] = True
    hit = positive.gather(1, top)
    top_in = in_segment[top]
    hits = torch.stack([(hit & top_in).cumsum(1), (hit & ~top_in).cumsum(1)], dim=1)
    seg = in_segment[positive_i].long()
    positives = torch.zeros(len(scores), 2, dtype=torch.long, device=scores.device)
    positives.index_put_((positive_u, 1 - seg), torch.ones_like(seg), accumulate=True)
    return hits.cpu(), positives.cpu()


def segment_recall(hits, positives, topk):
    r"""Recall@k within each item segment, per user and averaged.

    A user's recall over a segment is the number of the user's positives of
    that segment in the top k, divided by the number of the user's positives
    of that segment; the segment's recall is its mean over the users having
    any positive in it (like RecBole's Recall, which averages per-user recall).

    Returns:
        tuple: ``per_user`` (``"<segment>_recall@<k>"`` -> float array, NaN
        for a user without positives in the segment) and ``summary``
        (segment -> ``{"users", "interactions", "recall@<k>"}``, the recall
        None when no user has a positive in the segment).
    """
    hits, positives = np.asarray(hits, dtype=float), np.asarray(positives)
    per_user, summary = {}, {}
    for j, segment in enumerate(SEGMENTS):
        has = positives[:, j] > 0
        summary[segment] = {"users": int(has.sum()), "interactions": int(positives[:, j].sum())}
        for k in topk:
            values = np.full(len(positives), np.nan)
            values[has] = hits[has, j, k - 1] / positives[has, j]
            per_user[f"{segment}_recall@{k}"] = values
            summary[segment][f"recall@{k}"] = float(values[has].mean()) if has.any() else None
    return per_user, summary


class EvaluationResult(OrderedDict):
    r"""RecBole's evaluation result (metric -> mean over users) that carries its per-user values.

    ``per_user``: ``{"user_id": raw user tokens, "<metric>@<k>": values}``,
    arrays aligned row by row, or None. ``segments``: the Recall@k of each
    item segment (:func:`segment_recall`'s summary), or None. They travel
    with the result through callers that pass RecBole's result on unchanged
    (``run_recbole``'s ``test_result``); it compares equal to a plain dict of
    the same means.
    """

    per_user = None
    segments = None


class PerUserScoresMixin:
    r"""Keeps, keyed by raw user token, each user's score of the last ``evaluate`` call.

    Paired tests between models need per-user scores, which RecBole averages
    away. Raw tokens (not internal ids) let runs of different models and seeds
    be aligned. Only full-ranking evaluation is covered: its batches hold one
    row per user, in the order RecBole's collector stacks them.

    After ``evaluate``, ``per_user_scores`` (and the returned result's
    ``per_user``) hold ``{"user_id": ..., "recall@20": ..., ...}``; None for
    sampled evaluation, and in multi-process runs, where each rank evaluates
    only its share of the users.

    Item segments: on a dataset that marks its ``cold_items`` (items with no
    training interaction, :class:`recbole_ci2mg.data.MultimodalDataset`), the
    positives are split into cold and warm, and Recall@k is computed within
    each (:func:`segment_recall`): the per-user values join
    ``per_user_scores`` as ``cold_recall@<k>`` and ``warm_recall@<k>`` (NaN
    for a user without positives of that segment), and their means are the
    result's ``segments``. Computed under the same conditions as the per-user
    scores.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.evaluator = PerUserEvaluator(config)
        self.per_user_scores = None
        self.segment_scores = None

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        self._evaluated_users.append(interaction[self.config["USER_ID_FIELD"]].cpu())
        if self._cold_items is not None:
            self._segment_batches.append(
                segment_hits(scores, positive_u, positive_i, self._cold_items, max(self.config["topk"]))
            )
        return interaction, scores, positive_u, positive_i

    def evaluate(self, eval_data, *args, **kwargs):
        self._evaluated_users, self._segment_batches = [], []
        full_ranking = isinstance(eval_data, FullSortEvalDataLoader)
        per_user_wanted = full_ranking and self.config["single_spec"]
        cold = getattr(eval_data._dataset, "cold_items", None) if eval_data else None
        self._cold_items = cold if per_user_wanted else None
        result = super().evaluate(eval_data, *args, **kwargs)
        self.per_user_scores, self.segment_scores = None, None
        if result is None:  # RecBole returns None for empty evaluation data
            return result
        if per_user_wanted and self.evaluator.per_user:
            users = torch.cat(self._evaluated_users).numpy()
            rows = {len(values) for values in self.evaluator.per_user.values()}
            if rows != {len(users)}:  # would silently misalign users and scores
                raise RuntimeError(f"Per-user scores have {rows} rows for {len(users)} evaluated users.")
            tokens = eval_data._dataset.id2token(self.config["USER_ID_FIELD"], users)
            self.per_user_scores = {"user_id": tokens.astype(str), **self.evaluator.per_user}
            if self._segment_batches:
                hits, positives = (torch.cat(parts) for parts in zip(*self._segment_batches))
                segment_users, self.segment_scores = segment_recall(hits, positives, self.config["topk"])
                self.per_user_scores.update(segment_users)
        result = EvaluationResult(result)
        result.per_user = self.per_user_scores
        result.segments = self.segment_scores
        return result


def get_trainer(model_type, model_name):
    r"""RecBole's trainer for ``model_name`` with this package's mixins.

    RecBole picks ``<model_name>Trainer`` when it exists (``NCLTrainer`` for
    NCL) and otherwise falls back on the model type; that choice is kept,
    except that ``NCLTrainer`` becomes RecBole's ``Trainer`` with NCL's E-step
    schedule (:class:`~recbole_ci2mg.compat.PrototypeEStepMixin`), since its
    own ``fit`` never hands the model to a dynamic negative sampler. A plugin
    model trained by another model's RecBole trainer names that model in its
    class attribute ``recbole_trainer`` (CI2MG-S: ``"NCL"``).
    """
    model_name = getattr(get_model(model_name), "recbole_trainer", model_name)
    trainer_class = recbole_get_trainer(model_type, model_name)
    mixins = (EpochStatsMixin, PerUserScoresMixin, PlainCheckpointMixin)
    if issubclass(trainer_class, NCLTrainer):
        trainer_class, mixins = Trainer, (PrototypeEStepMixin, *mixins)
    return type(trainer_class.__name__, (*mixins, trainer_class), {})
