r"""Config settings given on a command line: ``--key=value`` arguments, read as RecBole reads them."""

import ast


def config_value(text):
    r"""A command-line value as RecBole's ``Config`` reads it.

    RecBole ``eval``\ s the string and falls back on true/false and the plain
    string; ``ast.literal_eval`` reads the same literals (numbers, lists,
    dicts, True/False/None) without running code.
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False}.get(text.lower(), text)


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
