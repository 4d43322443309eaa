"""Model settings read from a RecBole config, whose only defaults are the model's YAML."""


def require_setting(config, key, model):
    r"""``config[key]``, or a ``ValueError`` naming the key and ``properties/model/<model>.yaml``.

    RecBole's ``Config`` answers ``None`` for a key no file set. A model that
    read its switches as ``bool(config[key])`` would then run with them off,
    silently, whenever its YAML was not loaded (through
    ``recbole.quick_start.run_recbole``, for instance, which reads RecBole's
    own properties only). The YAML is the only home of the defaults, so an
    unset key is an error.
    """
    value = config[key] if key in config else None
    if value is None:
        raise ValueError(
            f"{model}: config key `{key}` is not set. Its default is in properties/model/{model}.yaml of "
            f"recbole_ci2mg, which this config did not load: build the config with "
            f"recbole_ci2mg.quick_start.build_config (run_recbole.py does), or add that file to "
            f"config_file_list, or set `{key}` yourself."
        )
    return value
