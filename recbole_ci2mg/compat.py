"""Every workaround this project needs for RecBole 1.2.1 on today's libraries.

RecBole 1.2.1 is its last release. Each function or class here fixes one
behaviour of it, named in its docstring; nothing else in the package patches
RecBole, and RecBole itself is neither forked nor copied. Dependency bounds
that protect RecBole (numpy<2, pandas<3, scipy<1.13, setuptools<81) live in
``pyproject.toml`` with a comment each.
"""

import os
import uuid
from contextlib import contextmanager
from logging import getLogger

import torch
from recbole.config import Config


# Config keys with which RecBole's multi-process mode starts a rank (see
# patch_distributed); a checkpoint keeps none of them, so it reloads in one process.
DISTRIBUTED_ARGUMENTS = ("local_rank", "world_size", "ip", "port", "nproc", "offset")


def plain_config(config):
    r"""The parts of a RecBole ``Config`` needed to rebuild it, as plain data.

    RecBole pickles its whole ``Config`` object into every checkpoint (with
    pickle protocol 4). torch >= 2.6 loads checkpoints with
    ``weights_only=True``, which refuses such pickles ("Unsupported operand
    149"), and loading them with ``weights_only=False`` runs whatever code a
    crafted file holds. We store instead the model name, the dataset name and
    the external settings (config files, config dict and command line, already
    merged by RecBole), which rebuild the same ``Config`` through
    :func:`recbole_ci2mg.quick_start.build_config`, less the keys that made
    the run multi-process.
    """
    settings = {
        key: _plain(value)
        for key, value in config.external_config_dict.items()
        if key not in ("model", "dataset") and key not in DISTRIBUTED_ARGUMENTS
    }
    return {"model": config["model"], "dataset": config["dataset"], "settings": settings}


def _plain(value):
    """``value`` with every leaf turned into a type ``weights_only`` loading accepts."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        # numpy and torch scalars; numpy.float64 even passes isinstance(float)
        # but pickles as a numpy global that weights_only loading refuses.
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


class PlainCheckpointMixin:
    r"""Makes RecBole's trainers write checkpoints that load with ``weights_only=True``.

    Fixes two behaviours of ``recbole.trainer.Trainer``:

    - ``_save_checkpoint`` pickles the ``Config`` object (see
      :func:`plain_config`); here the checkpoint holds only tensors and plain
      values, so RecBole's own ``resume_checkpoint`` and
      ``evaluate(load_best_model=True)``, which call ``torch.load`` with
      torch's safe default, read it back.
    - The checkpoint file is named ``<model>-<time to the second>.pth``, so two
      runs of one model started in the same second in the same
      ``checkpoint_dir`` (a group of seeds, parallel processes) overwrite each
      other's best model. A random suffix keeps them apart.

    In multi-process training (``single_spec`` False) only rank 0 writes the
    checkpoint, and every rank reads it back in ``evaluate(load_best_model=
    True)``. RecBole's ranks each name the file from their own clock, so a
    rank started a second later looks for a file that was never written; here
    every rank takes rank 0's name, and waits for rank 0 to finish writing
    before reading. (Ranks on other machines need a shared ``checkpoint_dir``.)
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        stem, ext = os.path.splitext(self.saved_model_file)
        self.saved_model_file = f"{stem}-{uuid.uuid4().hex[:8]}{ext}"
        if not config["single_spec"]:
            shared = [self.saved_model_file]
            torch.distributed.broadcast_object_list(shared, src=0)
            self.saved_model_file = shared[0]

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and model_file is None and not self.config["single_spec"]:
            torch.distributed.barrier()  # rank 0 may still be writing the best model
        return super().evaluate(eval_data, load_best_model, model_file, show_progress)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": plain_config(self.config),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": _plain(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        torch.save(state, saved_model_file)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")


def load_checkpoint(model_file, allow_unsafe_pickle=False):
    r"""Read a checkpoint written by this package, or, on request, a legacy RecBole one.

    Checkpoints written through :class:`PlainCheckpointMixin` hold plain data
    and load with ``weights_only=True``. A checkpoint written by RecBole itself
    pickles its ``Config`` and can only be read by unpickling arbitrary
    objects, which runs any code a crafted file contains; that happens only when
    the caller passes ``allow_unsafe_pickle=True`` for a file it trusts.
    """
    try:
        return torch.load(model_file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"Checkpoint {model_file} does not exist.") from None
    except Exception as error:  # pickle.UnpicklingError and friends
        if not allow_unsafe_pickle:
            raise ValueError(
                f"Checkpoint {model_file} holds pickled Python objects (a checkpoint "
                f"written by RecBole itself, not by recbole_ci2mg), so it cannot be "
                f"loaded safely ({type(error).__name__}). If you trust the file, load "
                f"it with load_data_and_model(file, allow_unsafe_pickle=True); "
                f"unpickling runs any code the file contains."
            ) from None
    getLogger().warning(f"Unpickling legacy checkpoint {model_file} with weights_only=False.")
    return torch.load(model_file, map_location="cpu", weights_only=False)


def check_benchmark_split(dataset):
    r"""Refuse a benchmark dataset whose rows no longer match its split files.

    With ``benchmark_filename`` RecBole records each split file's row count
    when it loads the files (``Dataset.file_size_list``) and later slices the
    concatenated interactions by those counts, never updating them. Any option
    that drops rows in between (duplicate removal, value intervals, count
    filters, NaN drops) silently moves train rows into valid and valid rows into
    test. We check the counts still add up before RecBole slices.
    """
    expected = int(sum(dataset.file_size_list))
    actual = len(dataset.inter_feat)
    if expected != actual:
        files = ", ".join(
            f"{dataset.dataset_name}.{name}.inter ({size} rows)"
            for name, size in zip(dataset.benchmark_filename_list, dataset.file_size_list)
        )
        raise ValueError(
            f"Benchmark split of {dataset.dataset_name} broken: the split files "
            f"{files} hold {expected} rows but {actual} remain after loading, so "
            f"RecBole would shift the train/valid/test boundaries. Turn off every "
            f"option that drops interactions for benchmark datasets (rm_dup_inter, "
            f"val_interval, user_inter_num_interval, item_inter_num_interval, "
            f"NaN filtering) in the dataset's YAML."
        )


# Config keys of recbole_ci2mg.data.MultimodalDataset that change the data.
MULTIMODAL_DATASET_ARGUMENTS = ["modalities", "missing_rate", "missing_mode", "mask_seed", "mask_file"]


def register_dataset_arguments():
    r"""Make RecBole's dataset and dataloader caches see our dataset keys.

    With ``save_dataset`` / ``save_dataloaders``, RecBole reloads a pickled
    dataset or dataloader when the keys in ``recbole.utils.argument_list.
    dataset_arguments`` are unchanged. Our keys are not among them, so a cache
    written at ``missing_rate: 0`` would be reused at ``missing_rate: 0.9``.
    Appending them to that list (the one object RecBole compares against, and
    lists under "Dataset" when it prints a config) makes a changed mask
    invalidate the cache.
    """
    from recbole.utils.argument_list import dataset_arguments

    for key in MULTIMODAL_DATASET_ARGUMENTS:
        if key not in dataset_arguments:
            dataset_arguments.append(key)


@contextmanager
def keep_anomaly_mode():
    r"""Restore autograd's anomaly detection to its state on entry.

    RecBole 1.2.1's ``recbole/model/sequential_recommender/sine.py`` calls
    ``torch.autograd.set_detect_anomaly(True)`` when imported, and
    ``recbole.utils.get_model`` imports every model package while it searches
    a name it does not find early (a sequential model, or a misspelt name).
    Anomaly detection then stays on for the rest of the process: every
    backward pass runs several times slower, and a later run fails where it
    would otherwise have trained.
    """
    enabled = torch.is_anomaly_enabled()
    try:
        yield
    finally:
        torch.autograd.set_detect_anomaly(enabled)


def patch_distributed():
    r"""Let RecBole's multi-process mode run on CPU (gloo) as well as on GPUs (nccl).

    RecBole 1.2.1 starts a rank whenever the config holds ``local_rank`` and
    then hard-codes CUDA in two places:

    - ``Config._init_device`` always calls ``init_process_group(backend=
      "nccl")``, puts the rank on ``cuda:<local_rank>`` and calls
      ``torch.cuda.set_device``, which fail on a machine without CUDA.
    - ``AbstractTrainer.__init__`` wraps the model in ``SyncBatchNorm`` (whose
      training forward refuses CPU tensors once a process group exists) and in
      ``DistributedDataParallel(device_ids=[local_rank])``, which refuses
      device ids for a CPU module.

    With the patch, a rank whose config asks for no GPU (``gpu_id`` empty) or
    that finds no CUDA device joins the group with ``gloo`` on the CPU, the
    same condition under which RecBole's single-process mode picks the CPU;
    GPU ranks go through RecBole's own code unchanged. Single-process runs
    (no ``local_rank``) are untouched. Idempotent.
    """
    from recbole.config import Config
    from recbole.trainer import trainer as recbole_trainer

    if getattr(Config._init_device, "_ci2mg_patched", False):
        return
    recbole_init_device = Config._init_device

    def _init_device(self):
        settings = self.final_config_dict
        if "local_rank" in settings and not _rank_uses_cuda(settings):
            _init_cpu_rank(settings)
        else:
            recbole_init_device(self)

    def _trainer_init(self, config, model):
        self.config = config
        self.model = model
        if not config["single_spec"]:
            device_ids = None  # DistributedDataParallel's value for CPU modules
            if config["device"].type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
                device_ids = [config["local_rank"]]
            # BatchNorm on CPU ranks stays per rank: CI2MG normalises over the
            # whole item set, which every rank computes alike; a model that
            # normalises over the batch (MMSSL) sees its rank's share of it.
            self.distributed_model = recbole_trainer.DistributedDataParallel(self.model, device_ids=device_ids)

    _init_device._ci2mg_patched = True
    Config._init_device = _init_device
    recbole_trainer.AbstractTrainer.__init__ = _trainer_init


def make_output_dirs(config):
    r"""Create the directories RecBole writes a run's log and checkpoints into.

    RecBole 1.2.1 creates ``./log``, ``./log/<model>`` (``init_logger``) and
    ``checkpoint_dir`` (``Trainer.__init__``, ``Dataset.save``) with
    ``ensure_dir``, which tests ``os.path.exists`` and then calls
    ``os.makedirs`` without ``exist_ok``. In multi-process mode every rank does
    this at the same moment, and a rank that loses the race between the test
    and the creation dies with ``FileExistsError``. Created here first, with
    ``exist_ok``, they already exist when RecBole looks.
    """
    for directory in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
        os.makedirs(directory, exist_ok=True)


def _rank_uses_cuda(settings):
    """RecBole's own rule for the device, applied to a rank: a GPU id is set and CUDA is there."""
    gpu_id = settings["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    settings["gpu_id"] = gpu_id
    # Set before CUDA is first queried, as RecBole does, so the query sees it.
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    return len(gpu_id) > 0 and torch.cuda.is_available()


def _init_cpu_rank(settings):
    """RecBole's distributed branch of ``Config._init_device`` with ``gloo`` and the CPU."""
    torch.distributed.init_process_group(
        backend="gloo",
        rank=settings["local_rank"] + settings["offset"],
        world_size=settings["world_size"],
        init_method=f"tcp://{settings['ip']}:{settings['port']}",
    )
    settings["device"] = torch.device("cpu")
    settings["single_spec"] = False
    if settings["local_rank"] != 0:  # as RecBole: only rank 0 logs and shows progress
        settings["state"] = "error"
        settings["show_progress"] = False
        settings["verbose"] = False


def best_trial(trials, bigger=True):
    r"""The trial with the best validation score, the first of equal ones.

    Replaces ``HyperTuning.best_params``, which RecBole's ``trial`` keeps with
    ``if not self.best_score``: a best score of exactly 0 (a short trial that
    recalls nothing) reads as "no best yet", so the next trial replaces it even
    when it scores worse. ``HyperTuning.params2result`` is keyed by the printed
    parameters, so random and bayes search, which can draw one configuration
    twice, keep only the last of its results; callers record every trial.

    Args:
        trials (list of dict): each with ``valid_score``.
        bigger (bool): ``valid_metric_bigger`` of the config.
    """
    if not trials:
        raise ValueError("No trial finished, so there is no best configuration.")
    best = trials[0]
    for trial in trials[1:]:
        score = trial["valid_score"]
        if score > best["valid_score"] if bigger else score < best["valid_score"]:
            best = trial
    return best



class ConfigWithoutCommandLine(Config):
    r"""RecBole's ``Config``, less its reading of the process command line.

    ``Config._load_cmd_line`` reads every ``--key=value`` of ``sys.argv`` and
    ranks it above ``config_dict``: a program that builds configs itself (a
    comparison's runs, a search's trials, a Ray worker, pytest) would have its
    own flags read as config keys, and a ``--seed`` on its command line would
    override every run's seed. This subclass reads no command line; the
    scripts that take RecBole's flags (``run_recbole.py``, ``run_hyper.py``)
    parse them with :func:`recbole_ci2mg.settings.parse_overrides` and pass
    them in ``config_dict``, which RecBole converts as it converts the
    command line.
    """

    def _load_cmd_line(self):
        return {}
