"""RecBole's trainers, with plain-data checkpoints and per-epoch statistics."""

from time import perf_counter

from recbole.utils import get_trainer as recbole_get_trainer

from recbole_ci2mg.compat import PlainCheckpointMixin


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


def get_trainer(model_type, model_name):
    r"""RecBole's trainer for ``model_name`` with this package's mixins.

    RecBole picks ``<model_name>Trainer`` when it exists (``NCLTrainer`` for
    NCL) and otherwise falls back on the model type; that choice is kept.
    """
    trainer_class = recbole_get_trainer(model_type, model_name)
    return type(trainer_class.__name__, (EpochStatsMixin, PlainCheckpointMixin, trainer_class), {})
