"""Training and evaluating plugin and built-in models, as ``recbole.quick_start`` does.

RecBole's ``run_recbole``, ``run_recbole_group`` and ``objective_function``
resolve model names among RecBole's built-ins only and build RecBole's own
datasets. These do the same job with :func:`recbole_ci2mg.registry.get_model`,
:class:`recbole_ci2mg.data.MultimodalDataset` and the trainers of
:mod:`recbole_ci2mg.trainer`, and read the project's ``properties/`` files.
"""

import logging
import os
import sys
from logging import getLogger
from pathlib import Path

import torch
import yaml

from recbole.config import Config
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import ModelType, get_environment, get_flops, init_logger, init_seed, set_color

from recbole_ci2mg.compat import (
    CheckpointConfig,
    ConfigWithoutCommandLine,
    load_checkpoint,
    make_output_dirs,
    patch_config_parsing,
    patch_distributed,
    patch_pickled_caches,
    patch_training_negatives,
    refuse_unsafe_settings,
    register_dataset_arguments,
)
from recbole_ci2mg.data import MultimodalDataset
from recbole_ci2mg.registry import get_model
from recbole_ci2mg.settings import refuse_unknown_keys
from recbole_ci2mg.trainer import get_trainer

PROPERTIES_DIR = Path(__file__).resolve().parents[1] / "properties"

register_dataset_arguments()
patch_distributed()
patch_config_parsing()
patch_pickled_caches()
patch_training_negatives()


def properties_files(model_class, dataset):
    r"""The project's YAML files for a run, in RecBole's order.

    ``overall.yaml`` (the shared evaluation protocol), then the YAML of every
    model named in the class's ``properties_from`` (a variant reads its parent's
    defaults first), then ``model/<model>.yaml``, then ``dataset/<dataset>.yaml``,
    each when present. They come before the user's own files, which override them.
    """
    models = list(getattr(model_class, "properties_from", ())) + [model_class.__name__]
    candidates = (
        [PROPERTIES_DIR / "overall.yaml"]
        + [PROPERTIES_DIR / "model" / f"{name}.yaml" for name in models]
        + [PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"]
    )
    return [str(path) for path in candidates if path.is_file()]


def build_config(model, dataset, config_file_list=None, config_dict=None):
    r"""A RecBole ``Config`` for a plugin or built-in model, with the project's properties.

    Settings come from the files and ``config_dict`` only, never from the
    process command line (see :class:`recbole_ci2mg.compat.ConfigWithoutCommandLine`).
    A ``config_dict`` key that no loaded file, model, dataset or RecBole
    default knows is an error naming the closest known keys (:func:`recbole_ci2mg.settings.refuse_unknown_keys`).
    """
    model_class = get_model(model)
    files = properties_files(model_class, dataset) + list(config_file_list or [])
    config = ConfigWithoutCommandLine(
        model=model_class, dataset=dataset, config_file_list=files, config_dict=config_dict
    )
    refuse_unknown_keys(config, config.variable_config_dict)
    refuse_unsafe_settings(config)
    return config


def _checkpoint_config(model_file, saved_config):
    r"""The ``Config`` of a checkpoint written by this package, rebuilt as :func:`build_config` builds it.

    The stored settings are taken as plain values, never read as text (see
    :class:`recbole_ci2mg.compat.CheckpointConfig`).
    """
    if not (
        isinstance(saved_config, dict)
        and isinstance(saved_config.get("model"), str)
        and isinstance(saved_config.get("dataset"), str)
        and "settings" in saved_config
    ):
        raise ValueError(
            f"Checkpoint {model_file}: its config is not the model, dataset and settings "
            f"recbole_ci2mg writes; the file was altered or not written by this package, and is not loaded."
        )
    model_class = get_model(saved_config["model"])
    dataset = saved_config["dataset"]
    files = properties_files(model_class, dataset)
    config = CheckpointConfig(model_file, model_class, dataset, files, saved_config["settings"])
    refuse_unsafe_settings(config, f"Checkpoint {model_file}")
    return config


def create_dataset(config):
    r"""The dataset for ``config``.

    General recommenders, ours and RecBole's, get :class:`MultimodalDataset`,
    so every model of a comparison reads the same split, features and mask;
    other model types get RecBole's own dataset classes.
    """
    if config["MODEL_TYPE"] == ModelType.GENERAL:
        return MultimodalDataset(config)
    return recbole_create_dataset(config)


def set_torch_threads(config):
    r"""Set torch's CPU threads from ``torch_threads`` (``properties/overall.yaml``); the threads in use.

    An ``OMP_NUM_THREADS`` in the environment is an explicit choice and takes
    precedence (torch has already read it). ``auto`` (or unset) keeps
    torch's own default, one thread per core. An integer sets that many:
    the default, 1, because on cores shared with other processes torch's
    default made CI²MG's epochs 7 to 8 times slower (README, "Threads").
    """
    setting = config["torch_threads"]
    if setting not in (None, "auto") and (isinstance(setting, bool) or not isinstance(setting, int) or setting < 1):
        raise ValueError(
            f"torch_threads must be a positive integer or auto, got {setting!r} "
            f"(properties/overall.yaml, or --torch_threads=...)."
        )
    if os.environ.get("OMP_NUM_THREADS") or setting in (None, "auto"):
        return torch.get_num_threads()
    torch.set_num_threads(setting)
    return setting


def _log_flops(model, dataset, config, logger):
    # RecBole logs FLOPs by tracing one prediction; a model thop cannot trace
    # must not stop the run.
    try:
        flops = get_flops(model, dataset, config["device"], logger, construct_transform(config))
        logger.info(set_color("FLOPs", "blue") + f": {flops}")
    except Exception as error:  # noqa: BLE001 - logging only
        logger.warning(f"FLOPs not counted: {type(error).__name__}: {error}")


def run_recbole(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None):
    r"""Train ``model`` on ``dataset`` and evaluate it, like ``recbole.quick_start.run_recbole``.

    Returns:
        dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
        ``test_result`` (as RecBole), plus ``model``, ``dataset``, ``seed``,
        ``best_epoch``, ``train_epoch_seconds`` (mean over epochs) and
        ``epochs_trained``.
    """
    config = build_config(model, dataset, config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    make_output_dirs(config)
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    logger.info(f"torch threads: {set_torch_threads(config)}")

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(model)(config, train_data._dataset).to(config["device"])
    logger.info(model)
    _log_flops(model, dataset, config, logger)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    if getattr(test_result, "segments", None):
        logger.info(set_color("test recall by item segment", "yellow") + f": {test_result.segments}")

    epoch_seconds = trainer.train_epoch_seconds
    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "seed": config["seed"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "best_epoch": trainer.best_epoch,
        "epochs_trained": len(epoch_seconds),
        "train_epoch_seconds": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
        "saved_model_file": trainer.saved_model_file if saved else None,
    }
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def run_recbole_distributed(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=2,
    world_size=-1,
    ip="localhost",
    port="5678",
    group_offset=0,
):
    r"""Train and evaluate with ``nproc`` processes, like ``recbole.quick_start.run`` with ``nproc > 1``.

    Each process runs :func:`run_recbole` as one rank of RecBole's
    ``DistributedDataParallel`` mode: the training batches and the evaluated
    users are split between ranks, gradients and metrics are gathered. Ranks
    use the GPUs of ``gpu_id`` with ``nccl`` where CUDA is available, and the
    CPU with ``gloo`` otherwise (see :func:`recbole_ci2mg.compat.patch_distributed`).

    Args:
        nproc (int): processes started on this machine.
        world_size (int): processes over all machines; -1 means ``nproc``.
        ip, port (str): address of rank 0's rendezvous (``tcp://ip:port``).
        group_offset (int): global rank of this machine's first process.

    Returns:
        dict: the result of :func:`run_recbole` on this machine's first rank
        (metrics are gathered over all ranks, so every rank holds the same);
        None if that rank returned nothing.
    """
    import torch.multiprocessing as mp

    if world_size == -1:
        world_size = nproc
    if nproc < 1 or world_size < nproc:
        raise ValueError(f"Need nproc >= 1 and world_size >= nproc; got nproc = {nproc}, world_size = {world_size}.")
    config_dict = dict(config_dict or {})
    config_dict.update({"world_size": world_size, "ip": ip, "port": port, "nproc": nproc, "offset": group_offset})
    # The results travel back through a queue of the "spawn" context, the
    # start method mp.spawn uses (RecBole's run() does the same).
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(
        _run_rank,
        args=(model, dataset, config_file_list, config_dict, saved, queue),
        nprocs=nproc,
        join=True,
    )
    return None if queue.empty() else queue.get()


def _run_rank(rank, model, dataset, config_file_list, config_dict, saved, queue):
    """One process of :func:`run_recbole_distributed`; ``rank`` is its local rank."""
    import torch.distributed as dist

    try:
        run_recbole(model, dataset, config_file_list, {**config_dict, "local_rank": rank}, saved, queue)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_recbole_group(model_list, dataset, config_file_list=None, config_dict=None, saved=True):
    """Run several models, plugin or built-in, on one dataset; one result per model."""
    return [
        run_recbole(model, dataset, config_file_list, dict(config_dict or {}), saved)
        for model in model_list
    ]


def objective_function(config_dict=None, config_file_list=None, saved=True):
    r"""``recbole.trainer.HyperTuning``'s objective, for plugin and built-in models.

    The model and dataset names come from ``config_dict`` or the config files,
    as in RecBole. Selection uses ``best_valid_score``; the test result is
    reported beside it, never used to choose.
    """
    settings = {}
    for file in config_file_list or []:
        with open(file) as f:
            settings.update(yaml.safe_load(f) or {})
    settings.update(config_dict or {})
    if "model" not in settings or "dataset" not in settings:
        raise KeyError("objective_function needs 'model' and 'dataset' in config_dict or the config files.")
    config = build_config(settings["model"], settings["dataset"], config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    set_torch_threads(config)
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    init_logger(config)
    logging.basicConfig(level=logging.ERROR)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(settings["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, verbose=False, saved=saved)
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }


def load_data_and_model(model_file, allow_unsafe_pickle=False):
    r"""Rebuild config, data and trained model from a checkpoint, like RecBole's function.

    Checkpoints written by this package hold plain data and load with
    ``weights_only=True``; their settings are taken as values, never run (see
    :class:`recbole_ci2mg.compat.CheckpointConfig`). A checkpoint written by RecBole itself needs
    ``allow_unsafe_pickle=True`` (see :func:`recbole_ci2mg.compat.load_checkpoint`).

    Returns:
        tuple: ``(config, model, dataset, train_data, valid_data, test_data)``.
    """
    checkpoint = load_checkpoint(model_file, allow_unsafe_pickle)
    saved_config = checkpoint["config"]
    if isinstance(saved_config, Config):  # legacy RecBole checkpoint, loaded on request
        config = saved_config
    else:
        config = _checkpoint_config(model_file, saved_config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:  # torch names every missing, unexpected or resized parameter
        raise ValueError(
            f"{model_file}: its parameters do not fit the {config['model']} that this version of recbole-ci2mg builds "
            f"from the checkpoint's settings. It was most likely written by a version in which a setting it holds "
            f"meant something else or did not exist yet (this version ignores a setting it does not read): load it "
            f"with the version that wrote it, or train again. {error}"
        ) from error
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
