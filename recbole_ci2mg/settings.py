r"""Config settings given outside config files: ``--key=value`` arguments, and keys nothing knows.

RecBole accepts any key in ``config_dict`` or on the command line and silently
ignores one that nothing reads, so a misspelt ``--misssing_rate=0.5`` would
train at the default rate and be recorded as if applied. Every config this
package builds (:func:`recbole_ci2mg.quick_start.build_config`) goes through
:func:`refuse_unknown_keys`, which refuses a key that is not *known*, naming
the closest known ones. A key is known when it is in

- a loaded config file: ``properties/overall.yaml``, the model's and the
  dataset's YAML, and the user's ``--config_files``;
- RecBole's defaults (``recbole/properties/overall.yaml``, the model's YAML,
  the dataset YAMLs RecBole loads) or its argument lists
  (``recbole/utils/argument_list.py``), or :data:`RECBOLE_KEYS_WITHOUT_DEFAULT`;
- the model YAMLs of the model class's parent classes (a plugin subclass of
  a RecBole model reads its parent's keys);
- the config's ``extra_keys`` list, which declares new keys.
"""

import difflib
import os

import recbole
import yaml

from recbole_ci2mg.compat import read_setting

# Keys that RecBole 1.2.1's framework code (config/, data/, evaluator/,
# trainer/) reads although no RecBole YAML gives them a default: the
# multi-process settings, options of transforms, metrics and model-specific
# trainers. tests/test_settings.py checks the list against RecBole's source.
RECBOLE_KEYS_WITHOUT_DEFAULT = frozenset(
    """
    model dataset local_rank world_size nproc offset ip port verbose loss_type
    CROP_ITEM_SEQ CROP_ITEM_SEQ_LEN INVERSE_ITEM_SEQ MASK_INDEX MASK_ITEM_SEQ REORDER_ITEM_SEQ
    NEG_ITEMS POS_ITEMS beta eta ft_ratio mask_ratio convert_token_to_onehot encoding token_num_threshold
    tail_ratio
    kge_interval m_step n_dec_epochs n_enc_epochs pretrain_epochs reg_weight save_step train_kg_step
    train_rec_step warm_up_step lgb_num_boost_round lgb_params xgb_early_stopping_rounds xgb_model
    xgb_nthread xgb_num_boost_round xgb_params xgb_silent xgb_verbose_eval
    """.split()
)
RECBOLE_MODEL_DIR = os.path.join(os.path.dirname(recbole.__file__), "properties", "model")


def config_value(text):
    r"""A command-line value as RecBole's ``Config`` reads it, without running it (:func:`recbole_ci2mg.compat.read_setting`)."""
    return read_setting(text)


def parse_overrides(args):
    r"""``["--epochs=2", "--reg_weight=1e-4"]`` -> ``{"epochs": 2, "reg_weight": 0.0001}``.

    Raises ValueError for an argument that is not ``--key=value`` and for a key
    given twice.
    """
    overrides = {}
    for arg in args:
        key, sep, value = arg[2:].partition("=")
        if not arg.startswith("--") or not sep or not key:
            raise ValueError(
                f"Unrecognised argument '{arg}': config settings are written --key=value "
                f"(run with -h for the options)."
            )
        if key in overrides:
            raise ValueError(f"--{key} is given twice; keep one.")
        overrides[key] = config_value(value)
    return overrides


def _yaml_keys(path):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return set(yaml.safe_load(f) or {})


def inherited_model_keys(model_class):
    r"""The keys of the model YAMLs of ``model_class``'s parent classes (ours and RecBole's).

    RecBole loads ``properties/model/<class name>.yaml`` only, yet a subclass
    runs its parents' ``__init__``: a plugin subclass of BPR reads BPR's keys,
    and LightGCN-M (a CI2MG with every component off) accepts CI2MG's.
    """
    from recbole_ci2mg.quick_start import PROPERTIES_DIR  # quick_start imports this module

    keys = set()
    for cls in model_class.__mro__[1:]:
        for folder in (str(PROPERTIES_DIR / "model"), RECBOLE_MODEL_DIR):
            keys |= _yaml_keys(os.path.join(folder, f"{cls.__name__}.yaml")) or set()
    return keys


def known_keys(config):
    r"""Every key a RecBole ``Config`` knows (see the module docstring), its ``config_dict`` aside."""
    keys = set(config.internal_config_dict) | set(config.file_config_dict)
    keys |= {key for group in config.parameters.values() for key in group}
    keys |= RECBOLE_KEYS_WITHOUT_DEFAULT | inherited_model_keys(config.model_class)
    extra = config["extra_keys"] or []
    extra = [extra] if isinstance(extra, str) else extra
    if not isinstance(extra, (list, tuple)):
        raise ValueError(f"extra_keys = {extra!r}: give a list of key names, e.g. --extra_keys=\"['my_key']\".")
    return keys | {str(key) for key in extra}


def refuse_unknown_keys(config, keys, source=None):
    r"""Refuse the keys of ``keys`` that ``config`` does not know, naming the closest known ones.

    Args:
        keys (iterable of str): the keys to check, e.g. those of ``config_dict``.
        source (str): where they were given (a file), to begin the message with.
    """
    known = known_keys(config)
    unknown = [key for key in keys if key not in known]
    if not unknown:
        return
    candidates = sorted(known)
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
        if close:
            hints.append(" or ".join(close) + ("" if len(unknown) == 1 else f" for '{key}'"))
    one = len(unknown) == 1
    raise ValueError(
        (f"{source}: " if source else "")
        + f"{', '.join(repr(key) for key in unknown)} {'is not a setting' if one else 'are not settings'} of "
        f"{config['model']} on {config['dataset']}: no loaded config file, model, dataset or RecBole default "
        f"knows {'it' if one else 'them'}, so {'it' if one else 'they'} would be silently ignored"
        + (f"; did you mean {', '.join(hints)}?" if hints else ".")
        + f" To use a new key, declare it: list it in extra_keys (--extra_keys=\"['{unknown[0]}']\") or set "
        f"it in a config file you pass (--config_files)."
    )
