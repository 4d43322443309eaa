"""Every workaround this project needs for RecBole 1.2.1 on today's libraries.

RecBole 1.2.1 is its last release. Each function or class here fixes one
behaviour of it, named in its docstring; nothing else in the package patches
RecBole, and RecBole itself is neither forked nor copied. Dependency bounds
(setuptools<81 for RecBole's tuning, and the numpy, scipy and pandas releases
CI runs) live in ``pyproject.toml`` with a comment each.
"""

import ast
import os
import pickle
import types
import uuid
from contextlib import contextmanager
from logging import getLogger

import numpy as np
import torch
import yaml
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


class PrototypeEStepMixin:
    r"""NCL's training schedule on RecBole's general ``Trainer``, in place of its ``NCLTrainer``.

    RecBole's ``NCLTrainer.fit`` is a copy of an older ``Trainer.fit`` with the
    E-step added: it never hands the model to a dynamic negative sampler, so
    ``train_neg_sample_args`` with ``dynamic: True`` fails at the first batch
    (``'NoneType' object has no attribute 'eval'``), it logs nothing to wandb,
    and ``m_step: 0`` is a bare ``ZeroDivisionError``. This mixin keeps
    ``Trainer.fit`` and adds NCL's two steps around each epoch, as
    ``NCLTrainer`` places them:

    - every ``m_step`` epochs, from epoch 0, ``model.e_step()`` before the
      epoch (outside its ``train_epoch_seconds``, as ``NCLTrainer`` times it);
    - for the first ``warm_up_step`` epochs, the last term of a tuple loss
      (NCL's prototype loss) is left out.

    A model whose prototypes are a switch says whether it has them in
    ``uses_prototypes`` (CI2MG-S: ``id_contrast``); without them the schedule
    neither runs nor logs an E-step.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        for key in ("m_step", "warm_up_step"):
            value = config[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "m_step" else 0):
                raise ValueError(
                    f"{type(model).__name__} trains with NCL's E-step schedule, which needs {key} as an integer "
                    f"(m_step at least 1, warm_up_step at least 0), got {value!r}: set --{key} in the model's YAML "
                    f"or on the command line."
                )
        self.num_m_step, self.warm_up_step = config["m_step"], config["warm_up_step"]

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if epoch_idx % self.num_m_step == 0 and getattr(self.model, "uses_prototypes", True):
            self.logger.info("Running E-step ! ")
            self.model.e_step()
        if loss_func is None and epoch_idx < self.warm_up_step:
            def loss_func(interaction):
                losses = self.model.calculate_loss(interaction)
                return losses[:-1] if isinstance(losses, tuple) else losses
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)


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


def read_setting(text):
    r"""A config string read as RecBole's ``Config`` reads it, without running it.

    RecBole ``eval``\ s the string, keeps the result if it is a number,
    string, list, tuple, dict, bool or None, and otherwise falls back on
    true/false and the string itself. ``ast.literal_eval`` reads the same
    literals without running code; anything else stays the string, as RecBole
    keeps the text its eval cannot read ("Recall@20", "RO", a path).
    """
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return {"true": True, "false": False}.get(text.lower(), text)
    return value if value is None or isinstance(value, (str, int, float, list, tuple, dict)) else text


class SafeYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the resolvers RecBole adds to ``yaml.FullLoader`` (see :func:`patch_config_parsing`)."""


def patch_config_parsing():
    r"""Make RecBole's ``Config`` read its settings as data, never as code.

    Fixes three behaviours of ``recbole.config.Config``:

    - ``_convert_config_dict`` ``eval``\ s every string value of
      ``config_dict`` and of the command line, so a setting such as
      ``"__import__('os').system(...)"`` runs, whether it comes from a
      checkpoint, a tuning search space or the command line. Here strings are
      read by :func:`read_setting`: the same literals, no code.
    - ``_build_yaml_loader`` reads config files with ``yaml.FullLoader``
      (extended by RecBole's pattern for floats such as ``1e-3``), which
      builds any imported Python object a ``!!python/name:`` tag names, and,
      before PyYAML 5.4, calls any callable. Here a ``yaml.SafeLoader`` with
      the same resolvers reads them: plain YAML values only.
    - ``_load_config_files`` reports a YAML error without naming the file;
      here the error names it.

    Idempotent.
    """
    if getattr(Config._convert_config_dict, "_ci2mg_patched", False):
        return
    # RecBole's loader class, with the resolvers it adds; its constructor is the unsafe part.
    recbole_loader = Config._build_yaml_loader(None)
    SafeYamlLoader.yaml_implicit_resolvers = {
        first: list(resolvers) for first, resolvers in recbole_loader.yaml_implicit_resolvers.items()
    }
    recbole_load_config_files = Config._load_config_files

    def _convert_config_dict(self, config_dict):
        for key, value in config_dict.items():
            if isinstance(value, str):
                config_dict[key] = read_setting(value)
        return config_dict

    def _build_yaml_loader(self):
        return SafeYamlLoader

    def _load_config_files(self, file_list):
        settings = {}
        for file in file_list or []:
            try:
                settings.update(recbole_load_config_files(self, [file]))
            except yaml.YAMLError as error:
                raise ValueError(
                    f"Config file {file} is not plain YAML ({' '.join(str(error).split())}). Config "
                    f"files hold numbers, strings, lists and mappings; Python tags (!!python/...) "
                    f"are not read."
                ) from None
        return settings

    _convert_config_dict._ci2mg_patched = True
    Config._convert_config_dict = _convert_config_dict
    Config._build_yaml_loader = _build_yaml_loader
    Config._load_config_files = _load_config_files


def _check_plain(value, where):
    """Raise if ``value`` is not the plain data :func:`_plain` writes."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, list):
        for item in value:
            _check_plain(item, where)
        return
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        for item in value.values():
            _check_plain(item, where)
        return
    raise ValueError(
        f"{where} holds a {type(value).__module__}.{type(value).__name__}, but checkpoints written by "
        f"recbole_ci2mg hold plain values only (numbers, strings, lists, mappings). The file was altered "
        f"or not written by this package; it is not loaded."
    )


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


class CheckpointConfig(ConfigWithoutCommandLine):
    r"""A RecBole ``Config`` rebuilt from the settings :func:`plain_config` stored in a checkpoint.

    Those settings are values RecBole had already read, so they are taken as
    they are and never read again as text (RecBole's
    ``_load_variable_config_dict`` would pass each string to
    ``_convert_config_dict``, which ``eval``\ s it). A setting that is not
    plain data is refused, and so is a string where RecBole's defaults for the
    run (its YAML files and the project's ``properties/``) hold a number or a
    truth value: RecBole reads ``--epochs=5`` as 5 and the checkpoint stores 5,
    so such a string means the file was altered.

    Args:
        checkpoint_file (str): the checkpoint, named in errors.
        model, dataset, config_file_list: as for ``Config``.
        settings (dict): the settings the checkpoint's config stores.
    """

    def __init__(self, checkpoint_file, model, dataset, config_file_list, settings):
        self._checkpoint_file = checkpoint_file
        super().__init__(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=settings)

    def _load_variable_config_dict(self, config_dict):
        if not isinstance(config_dict, dict) or not all(isinstance(key, str) for key in config_dict):
            raise ValueError(
                f"Checkpoint {self._checkpoint_file}: its settings are not a mapping of setting names; "
                f"the file was altered or not written by recbole_ci2mg, and is not loaded."
            )
        for key, value in config_dict.items():
            _check_plain(value, f"Checkpoint {self._checkpoint_file}: setting '{key}'")
        return dict(config_dict)

    def _get_final_config_dict(self):
        defaults = {**self.internal_config_dict, **self.file_config_dict}
        for key, value in self.variable_config_dict.items():
            default = defaults.get(key)
            if isinstance(value, str) and isinstance(default, (bool, int, float)):
                raise ValueError(
                    f"Checkpoint {self._checkpoint_file}: setting '{key}' is the string {value!r}, where "
                    f"a {type(default).__name__} is expected (the default is {default!r}); checkpoints "
                    f"written by recbole_ci2mg store the value RecBole read, never its text. The file "
                    f"was altered or not written by this package; it is not loaded."
                )
        return super()._get_final_config_dict()


# Config keys with which RecBole writes, or reads back, a pickled dataset or its dataloaders.
PICKLED_CACHE_ARGUMENTS = ("save_dataset", "dataset_save_path", "save_dataloaders", "dataloaders_save_path")


def _refuse_unpickling(file, *args, **kwargs):
    name = getattr(file, "name", file)
    raise ValueError(
        f"RecBole would unpickle {name}, a saved dataset or dataloaders, and unpickling runs any code the "
        f"file holds; recbole_ci2mg never reads such caches. Delete or move {name} (the data is rebuilt "
        f"from the dataset files) and leave save_dataset and save_dataloaders off."
    )


def patch_pickled_caches():
    r"""Keep RecBole from unpickling saved datasets and dataloaders.

    ``recbole.data.utils.create_dataset`` unpickles ``dataset_save_path`` or
    ``<checkpoint_dir>/<dataset>-<class>.pth``, and ``data_preparation`` (via
    ``load_split_dataloaders``) ``dataloaders_save_path`` or
    ``<checkpoint_dir>/<dataset>-for-<model>-dataloader.pth``, whenever such
    a file exists, whether ``save_dataset`` / ``save_dataloaders`` are on or
    not; a crafted file runs its code there. ``recbole.data.utils`` gets a
    ``pickle`` that writes as pickle does and refuses to read, naming the
    file. Idempotent.
    """
    from recbole.data import utils

    if utils.pickle is pickle:
        utils.pickle = types.SimpleNamespace(dump=pickle.dump, load=_refuse_unpickling)


def refuse_unsafe_settings(config, source="the config"):
    r"""Refuse settings with which RecBole would unpickle a file or run a setting as code.

    - ``save_dataset``, ``dataset_save_path``, ``save_dataloaders`` and
      ``dataloaders_save_path`` make RecBole write, and read back, pickled
      datasets and dataloaders. This package never reads them (see
      :func:`patch_pickled_caches`), so writing one only leaves a file that
      the next run refuses.
    - ``KD_DAGFM.__init__`` builds its teacher network with
      ``eval(config["teacher"])``: the setting must name one of the networks
      of its module.
    - ``LDiffRec.__init__`` (with ``n_cate`` above 1) loads
      ``<dataset>/item_emb.npy`` with ``np.load(allow_pickle=True)``, which
      unpickles whatever objects the file holds: the file must be a plain
      numeric array.

    Args:
        source (str): where the settings come from, for the message.
    """
    cached = [key for key in PICKLED_CACHE_ARGUMENTS if config[key]]
    if cached:
        raise ValueError(
            f"{source} sets {', '.join(f'{key}={config[key]!r}' for key in cached)}: RecBole keeps those "
            f"caches as pickles, and reading a pickle runs any code it holds, so recbole_ci2mg neither "
            f"writes nor reads them (it rebuilds the data from the dataset files). Remove the setting."
        )
    if config["model"] == "KD_DAGFM":
        from recbole.model.context_aware_recommender import kd_dagfm

        networks = sorted(
            name for name, value in vars(kd_dagfm).items()
            if isinstance(value, type) and issubclass(value, torch.nn.Module) and value.__module__ == kd_dagfm.__name__
        )
        if config["teacher"] not in networks:
            raise ValueError(
                f"{source} sets teacher={config['teacher']!r}: RecBole's KD_DAGFM runs that setting "
                f"through eval, so it must name one of its networks ({', '.join(networks)})."
            )
    if config["model"] == "LDiffRec" and (config["n_cate"] or 0) > 1:
        path = os.path.join(config["data_path"], "item_emb.npy")
        if os.path.exists(path):
            try:
                np.load(path, allow_pickle=False)
            except ValueError as error:
                raise ValueError(
                    f"{path}: {error}. RecBole's LDiffRec loads it with allow_pickle=True, which runs any "
                    f"code pickled objects hold; save the item embeddings as a plain numeric array "
                    f"(np.save of a float array)."
                ) from None


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
MULTIMODAL_DATASET_ARGUMENTS = [
    "modalities", "missing_rate", "missing_mode", "mask_seed", "mask_file", "new_item_rate", "new_item_seed",
]


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


class _SamplingWithout:
    r"""A sampler's ``sampling``, redrawing the values that fall on excluded items (the conditional distribution)."""

    def __init__(self, sampling, excluded):
        self.sampling, self.excluded = sampling, excluded

    def __call__(self, sample_num):
        values = np.asarray(self.sampling(sample_num))
        hit = self.excluded[values]
        while hit.any():
            values[hit] = self.sampling(int(hit.sum()))
            hit = self.excluded[values]
        return values


def patch_training_negatives():
    r"""Keep the new items of the new-item setting out of RecBole's training negatives.

    RecBole 1.2.1's ``Sampler`` draws training negatives from every item id
    (uniformly, or by popularity over all splits), whatever the training split
    holds. An item whose training interactions were removed
    (:mod:`recbole_ci2mg.data.new_items`) would then be seen in training only
    as a negative, and a model would learn to rank it low for that alone (VBPR's
    item bias does: a planted new item fell below a random rank), although the
    setting means the item did not exist yet. ``recbole.data.utils.
    create_samplers`` is wrapped: when the training split marks ``new_items``
    (:class:`recbole_ci2mg.data.MultimodalDataset`), the training sampler
    redraws negatives that fall on them; the valid and test samplers, and
    runs without new items, are RecBole's own. Idempotent.
    """
    from recbole.data import utils

    if getattr(utils.create_samplers, "_ci2mg_patched", False):
        return
    recbole_create_samplers = utils.create_samplers

    def create_samplers(config, dataset, built_datasets):
        train_sampler, valid_sampler, test_sampler = recbole_create_samplers(config, dataset, built_datasets)
        new_items = getattr(built_datasets[0], "new_items", None)
        if train_sampler is not None and new_items is not None and bool(new_items.any()):
            train_sampler.sampling = _SamplingWithout(train_sampler.sampling, new_items.numpy())
        return train_sampler, valid_sampler, test_sampler

    create_samplers._ci2mg_patched = True
    utils.create_samplers = create_samplers


# numpy 2, scipy >= 1.13 and pandas 3 -----------------------------------------
# Each patch below is applied by recbole_ci2mg/__init__.py, so before any RecBole
# Config, dataset or model exists, and does nothing where the library still
# behaves as RecBole 1.2.1 and Ray 2.6.3 expect (numpy < 2, scipy < 1.13,
# pandas < 3).


def _numpy_has(name):
    """Whether numpy defines ``name``, without the DeprecationWarning numpy 1.24-1.26 gives for ``bool8``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return hasattr(np, name)


@contextmanager
def _numpy_aliases(**aliases):
    """numpy with those of ``aliases`` it lacks defined for the duration, removed afterwards."""
    added = [name for name in aliases if not _numpy_has(name)]
    for name in added:
        setattr(np, name, aliases[name])
    try:
        yield
    finally:
        for name in added:
            delattr(np, name)


def patch_config_numpy_aliases():
    r"""Let RecBole's ``Config`` start on numpy 2.

    ``Config.__init__`` first calls ``Config.compatibility_settings``, which
    restores the aliases numpy 1.24 removed (``np.float``, ``np.int``,
    ``np.bool``, ``np.long``, ...) that RecBole's metrics, data and model code
    and hyperopt 0.2.5 still use, from ``np.float_``, ``np.complex_`` and
    ``np.unicode_``. numpy 2 removed those three as well, so every ``Config``
    fails with ``AttributeError: np.float_ was removed in the NumPy 2.0
    release``. Here the three exist while RecBole's method runs, with the
    values numpy 1.x gave them (``float64``, ``complex128``, ``str_``); what
    RecBole sets stays as it sets it. No-op on numpy < 2. Idempotent.
    """
    if _numpy_has("float_") or getattr(Config.compatibility_settings, "_ci2mg_patched", False):
        return
    recbole_compatibility_settings = Config.compatibility_settings

    def compatibility_settings(self):
        with _numpy_aliases(float_=np.float64, complex_=np.complex128, unicode_=np.str_):
            recbole_compatibility_settings(self)

    compatibility_settings._ci2mg_patched = True
    Config.compatibility_settings = compatibility_settings


def import_ray_tune():
    r"""Import ``ray.tune`` so that Ray 2.6.3, RecBole's pinned Ray, loads on numpy 2.

    Ray 2.6.3's ``ray.tune.logger.tensorboardx``, which ``import ray.tune``
    loads, names ``np.bool8`` (removed in numpy 2) in two class bodies, so the
    import fails with ``AttributeError: module 'numpy' has no attribute
    'bool8'``; so does RecBole's ``recbole.quick_start``, which imports
    ``ray.tune``. Here the alias exists (as ``np.bool_``, its numpy 1.x value)
    while ``ray.tune`` is imported. Ray's workers import ``ray.tune`` again when
    they unpickle a trial, before any of our code runs in them: pass this
    function to ``ray.init`` as ``runtime_env={"worker_process_setup_hook":
    import_ray_tune}`` (as :mod:`recbole_ci2mg.tuning` does). Same import as
    ``import ray.tune`` on numpy < 2.
    """
    with _numpy_aliases(bool8=np.bool_):
        import ray.tune
    return ray.tune


def ray_runtime_env():
    """The ``runtime_env`` for ``ray.init`` that runs :func:`import_ray_tune` in every Ray worker; None on numpy < 2."""
    if _numpy_has("bool8"):
        return None
    return {"worker_process_setup_hook": import_ray_tune}


def check_ray_workers():
    r"""Refuse a running Ray whose workers cannot import ``ray.tune`` (see :func:`import_ray_tune`).

    A Ray the caller started on numpy 2 without a ``worker_process_setup_hook``
    would fail every trial in its workers with numpy's ``np.bool8`` error.
    """
    import ray

    if ray_runtime_env() and "worker_process_setup_hook" not in ray.get_runtime_context().runtime_env:
        raise RuntimeError(
            "Ray is already running without a worker setup hook, so on numpy 2 its workers cannot import "
            "Ray 2.6.3's ray.tune (np.bool8). Start it with ray.init(runtime_env=recbole_ci2mg.compat."
            "ray_runtime_env()), or leave starting it to recbole_ci2mg.tuning."
        )


def patch_dok_update():
    r"""Give scipy's ``dok_matrix`` back the ``_update`` RecBole builds its graphs with.

    RecBole 1.2.1's LightGCN, NGCF, NCL, SpectralCF, GCMC, KGIN and MCCLK fill
    their adjacency matrix with ``dok_matrix._update(dict)``, a private method
    scipy 1.13 removed (``AttributeError: 'dok_matrix' object has no attribute
    '_update'``) when it made the public ``dok_matrix.update`` take the same
    dictionary (it refused to before). ``_update`` becomes that public method,
    which stores the same entries after checking their indices. No-op on
    scipy < 1.13, which still has ``_update``.
    """
    from scipy.sparse import dok_matrix

    if not hasattr(dok_matrix, "_update"):
        dok_matrix._update = dok_matrix.update


def _chained_fillna_applies():
    """Whether ``frame[column].fillna(value, inplace=True)`` fills ``frame`` (pandas < 3 without Copy-on-Write)."""
    import warnings

    import pandas as pd

    frame = pd.DataFrame({"a": [float("nan")]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas >= 2.2 warns that this stops working under Copy-on-Write
        frame["a"].fillna(0.0, inplace=True)
    return not frame["a"].isna().any()


def patch_chained_fillna():
    r"""Make RecBole's missing-value filling work under pandas' Copy-on-Write (pandas 3).

    RecBole 1.2.1's ``Dataset`` fills missing values with
    ``frame[field].fillna(value, inplace=True)``:

    - ``_fill_nan`` fills TOKEN fields with 0 (``[PAD]``) and FLOAT fields
      with the field's mean: empty cells of ``.user``/``.item`` files, and the
      users and items that have no row there;
    - ``_load_feat`` fills the empty cells of token_seq and float_seq fields
      with ``""`` before splitting them.

    Under Copy-on-Write, always on in pandas 3, ``frame[field]`` behaves as a
    copy, so each call fills that copy and leaves ``frame`` as it was (pandas
    only warns ``ChainedAssignmentError``). ``_fill_nan`` then silently keeps
    NaN in float features and in the token ids of items without a feature row
    (a NaN RecBole later casts to a meaningless ``LongTensor`` index), and
    ``_load_feat`` fails on the first empty sequence cell (``'float' object has
    no attribute 'split'``). Here the same values are filled on the frame
    itself, with ``frame.fillna({field: value}, inplace=True)`` as pandas
    recommends, before RecBole's own calls: in ``_fill_nan`` for token and
    float fields, and in ``_load_feat`` on the frame its ``pd.read_csv``
    returns, for sequence fields. No-op where RecBole's chained calls still
    fill (pandas < 3 without ``mode.copy_on_write``). Idempotent.
    """
    from recbole.data.dataset import Dataset

    if getattr(Dataset._fill_nan, "_ci2mg_patched", False) or _chained_fillna_applies():
        return
    from recbole.utils import FeatureType

    recbole_fill_nan = Dataset._fill_nan
    recbole_load_feat = Dataset._load_feat

    def _fill_nan(self):
        for feat_name in self.feat_name_list:
            feat = getattr(self, feat_name)
            for field in feat:
                if self.field2type[field] == FeatureType.TOKEN:
                    feat.fillna({field: 0}, inplace=True)
                elif self.field2type[field] == FeatureType.FLOAT:
                    feat.fillna({field: feat[field].mean()}, inplace=True)
        recbole_fill_nan(self)

    def _load_feat(self, filepath, source):
        with _sequence_cells_filled():
            return recbole_load_feat(self, filepath, source)

    _fill_nan._ci2mg_patched = True
    Dataset._fill_nan = _fill_nan
    Dataset._load_feat = _load_feat


@contextmanager
def _sequence_cells_filled():
    """``pandas.read_csv`` filling the empty cells of RecBole's sequence columns (``name:token_seq``) with ``""``."""
    import pandas as pd
    from recbole.utils import FeatureType

    read_csv = pd.read_csv

    def read_atomic_file(*args, **kwargs):
        frame = read_csv(*args, **kwargs)
        sequences = [column for column in frame.columns if FeatureType(column.split(":")[1]).value.endswith("seq")]
        frame.fillna({column: "" for column in sequences}, inplace=True)
        return frame

    pd.read_csv = read_atomic_file
    try:
        yield
    finally:
        pd.read_csv = read_csv


def _series_agg_len_is_elementwise():
    """Whether ``Series.agg(len)`` gives each row's length (pandas < 3) rather than the row count."""
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas >= 2.1 deprecates the element-wise fallback
        return not isinstance(pd.Series([[1, 2]]).agg(len), int)


@contextmanager
def _elementwise_agg_len():
    """``pandas.Series.agg(len)`` as pandas < 3 computed it, ``Series.map(len)``, for the duration."""
    import pandas as pd

    agg = pd.Series.agg

    def agg_len_per_row(self, func=None, *args, **kwargs):
        if func is len:
            return self.map(len)
        return agg(self, func, *args, **kwargs)

    pd.Series.agg = agg_len_per_row
    try:
        yield
    finally:
        pd.Series.agg = agg


def patch_sequence_lengths():
    r"""Give RecBole the per-row lengths of its sequence fields under pandas 3.

    RecBole 1.2.1 takes the length of each row of a token_seq or float_seq
    column with ``frame[field].agg(len)`` and splits the concatenated values
    back into rows with it: in ``Dataset._remap`` (token_seq ids),
    ``Dataset._normalize`` and ``Dataset._discretization`` (float_seq
    values), ``KnowledgeBasedDataset._reset_ent_remapID`` (entity ids), and
    ``SequentialDataset._benchmark_presets`` (the ``item_length`` of
    benchmark files). pandas < 3 applied a function that does not aggregate
    to each element (deprecated since 2.1); pandas 3 passes it the whole
    Series, so ``len`` returns the number of rows: the splits then fail
    (``Length of values (1) does not match length of index``) or, in
    ``_benchmark_presets``, silently give every sequence the dataset's row
    count as its length. While these methods run, ``Series.agg(len)`` is
    ``Series.map(len)``, pandas < 3's result; every other function passes
    through. No-op on pandas < 3. Idempotent.
    """
    from recbole.data.dataset import Dataset, KnowledgeBasedDataset, SequentialDataset

    if getattr(Dataset._remap, "_ci2mg_patched", False) or _series_agg_len_is_elementwise():
        return
    for cls, name in (
        (Dataset, "_remap"),
        (Dataset, "_normalize"),
        (Dataset, "_discretization"),
        (KnowledgeBasedDataset, "_reset_ent_remapID"),
        (SequentialDataset, "_benchmark_presets"),
    ):
        setattr(cls, name, _with_elementwise_agg_len(getattr(cls, name)))


def _with_elementwise_agg_len(method):
    def patched(self, *args, **kwargs):
        with _elementwise_agg_len():
            return method(self, *args, **kwargs)

    patched.__name__ = method.__name__
    patched._ci2mg_patched = True
    return patched
