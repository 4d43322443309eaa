r"""Hyperparameter search and one-parameter sensitivity sweeps, for plugin and built-in models.

The search runs RecBole's own ``recbole.trainer.HyperTuning`` (hyperopt:
exhaustive, random or TPE "bayes" search) or Ray Tune, with
:func:`recbole_ci2mg.quick_start.objective_function` as the trial, so every
model that :func:`recbole_ci2mg.registry.get_model` knows can be tuned.

Selection uses the validation score only (``valid_metric`` at the best
validation epoch of each trial). Each trial's test score, at that same epoch,
is recorded beside it and reported for the chosen configuration; it never
takes part in the choice. Trials rebuild the dataset from the same config
keys, so they share the split and the missing-modality mask (drawn from
``mask_seed``, independent of the training ``seed``).

Search spaces are read from RecBole's params files, one parameter a line::

    n_prototypes choice [16,32,64,128,256]
    cl_temperature uniform 0.05,1.0
    learning_rate loguniform -7.6,-5.3     # natural logs: exp(-7.6) = 5e-4
    embedding_size quniform 16,64,16

with ``#`` comments and blank lines allowed.

A Hyperopt search with an ``output_file`` is resumable: every finished trial
is appended at once to ``<output_file>.trials.jsonl`` (:class:`TrialLog`), and
the same command run again replays the recorded trials to the sampler without
training them, so an interrupted search loses at most the trial in progress.
The sampler is seeded (``search_seed``, by default the config's ``seed``), so
the replayed search proposes the same configurations in the same order; a
larger ``max_evals`` extends a finished search.
"""

import ast
import csv
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from recbole.trainer import HyperTuning
from recbole.utils.utils import dict2str

from recbole_ci2mg.compat import best_trial, check_ray_workers, import_ray_tune, ray_runtime_env
from recbole_ci2mg.data.masks import check_mask_source
from recbole_ci2mg.quick_start import PROPERTIES_DIR, build_config, objective_function
from recbole_ci2mg.results import json_lines, locked
from recbole_ci2mg.settings import config_value, refuse_unknown_keys

# parameter type -> (number of comma-separated numbers, example); "choice" takes a list
PARAM_TYPES = {
    "choice": (None, "choice [16,32,64]"),
    "uniform": (2, "uniform 0.05,1.0"),
    "quniform": (3, "quniform 16,64,16"),
    "loguniform": (2, "loguniform -7.6,-5.3"),
}
ALGOS = ("exhaustive", "random", "bayes")
TOOLS = ("Hyperopt", "Ray")


def default_params_file(model):
    """``properties/hyper/<model>.hyper``, the search space shipped for ``model``."""
    return PROPERTIES_DIR / "hyper" / f"{model}.hyper"


def read_params_file(path):
    r"""Parse a RecBole params file into ``{name: (type, values)}``, in file order.

    Each line is ``name type values``: ``choice`` takes a Python list literal,
    ``uniform`` and ``loguniform`` take ``low,high`` (``loguniform`` in natural
    logs, as RecBole's ``hp.loguniform``), ``quniform`` takes ``low,high,q``.
    RecBole skips a line it cannot split into three fields and ``eval``\ s the
    choices; here such a line is an error naming the file, line and fix, and
    choices are read with ``ast.literal_eval``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Params file {path} does not exist.")
    params = OrderedDict()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        where = f"{path}, line {number} ({text!r})"
        fields = text.split()
        if len(fields) < 3:
            raise ValueError(f"{where}: expected 'name type values', e.g. 'n_prototypes {PARAM_TYPES['choice'][1]}'.")
        name, kind, raw = fields[0], fields[1], "".join(fields[2:])
        if kind not in PARAM_TYPES:
            types = "; ".join(f"'{example}'" for _, example in PARAM_TYPES.values())
            raise ValueError(f"{where}: unknown type '{kind}'. Types: {types}.")
        if name in params:
            raise ValueError(f"{where}: '{name}' is already defined on an earlier line; keep one.")
        params[name] = (kind, _parse_values(kind, raw, where))
    if not params:
        raise ValueError(f"Params file {path} defines no parameter (lines 'name type values').")
    return params


def _parse_values(kind, raw, where):
    count, example = PARAM_TYPES[kind]
    if kind == "choice":
        try:
            values = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            values = None
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise ValueError(f"{where}: a choice needs a non-empty Python list, e.g. '{example}'.")
        return list(values)
    try:
        numbers = [float(part) for part in raw.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != count:
        raise ValueError(f"{where}: {kind} needs {count} comma-separated numbers, e.g. '{example}'.")
    if numbers[0] >= numbers[1]:
        raise ValueError(f"{where}: low ({numbers[0]:g}) must be below high ({numbers[1]:g}).")
    if kind == "quniform" and numbers[2] <= 0:
        raise ValueError(f"{where}: the step q must be positive.")
    return numbers


def hyperopt_space(params):
    """The hyperopt space of :func:`read_params_file`'s output, built by RecBole's ``HyperTuning``."""
    by_type = {}
    for name, (kind, values) in params.items():
        by_type.setdefault(kind, {})[name] = values
    return HyperTuning._build_space_from_dict(by_type)


def check_settings(model, dataset, names, source, config_file_list=None, config_dict=None):
    r"""Refuse setting names the model's config does not know, or that are fixed elsewhere.

    RecBole accepts any key and silently ignores an unknown one, so a typo in a
    params file (``n_prototype``) would run every trial with the default
    (:func:`recbole_ci2mg.settings.refuse_unknown_keys` checks the searched
    names and the fixed keys alike). A fixed ``mask_file`` with a
    ``missing_rate`` is refused too. Returns the model's ``Config`` (built
    without loading data).
    """
    fixed = dict(config_dict or {})
    for name in names:
        if name in ("model", "dataset"):
            raise ValueError(f"{source}: '{name}' cannot be searched; tune one model on one dataset per run.")
        if name in fixed:
            # Which one wins depends on where it was given (RecBole ranks the
            # command line above config_dict): refuse the ambiguity.
            raise ValueError(
                f"{source}: '{name}' is searched and also fixed to {fixed[name]!r} (command line or "
                f"config_dict); drop one of them."
            )
    config = build_config(model, dataset, config_file_list, fixed)  # refuses unknown fixed keys
    refuse_unknown_keys(config, names, source)
    check_mask_source(config["mask_file"], config["missing_rate"])
    return config


def _trial_record(params, result):
    return {
        "params": dict(params),
        "valid_score": result["best_valid_score"],
        "valid_result": dict(result["best_valid_result"] or {}),
        "test_result": dict(result["test_result"] or {}),
    }


def trials_path(output_file):
    """``<output_file>.trials.jsonl``, the record of every finished trial of a search."""
    return Path(f"{output_file}.trials.jsonl")


def _canonical(value):
    return json.dumps(value, sort_keys=True, default=_json_default)


class TrialLog:
    r"""The finished trials of one search, one JSON line each, written as soon as a trial ends.

    The first line describes the search (model, dataset, algorithm, sampler seed,
    space and fixed settings); a file that describes another search is refused,
    so a record is never reused for a trial it was not run for.

    Args:
        path: the ``.trials.jsonl`` file (created when the first trial ends).
        search (dict): the search's description, JSON-serialisable.
    """

    def __init__(self, path, search):
        self.path, self.search = Path(path), json.loads(_canonical(search))
        self.records = {}
        if not self.path.exists():
            return
        for index, (number, entry) in enumerate(json_lines(self.path, "a trial")):
            if index == 0:
                if not isinstance(entry, dict) or entry.get("search") != self.search:
                    raise ValueError(
                        f"{self.path} records another search "
                        f"({_canonical(entry.get('search') if isinstance(entry, dict) else entry)}), not this one "
                        f"({_canonical(self.search)}). Give another --output_file, or delete the file to start over."
                    )
            elif not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
                raise ValueError(f"{self.path}, line {number}, is not a trial's record (no params); delete that line.")
            else:
                self.records[_canonical(entry["params"])] = entry

    def get(self, params):
        """The record of the trial with ``params``, or None."""
        return self.records.get(_canonical(params))

    def add(self, record):
        """Append one trial's record (the description first, when the file is new)."""
        lines = [] if self.path.exists() and self.path.stat().st_size else [_canonical({"search": self.search})]
        lines.append(_canonical(record))
        data = ("\n".join(lines) + "\n").encode()
        with locked(self.path) as fd:
            if os.write(fd, data) != len(data):
                raise OSError(f"{self.path}: the record of trial {record['params']} was cut off while writing.")
        self.records[_canonical(record["params"])] = json.loads(_canonical(record))


def tune(
    model,
    dataset,
    params_file=None,
    algo="exhaustive",
    max_evals=100,
    early_stop=None,
    config_file_list=None,
    config_dict=None,
    output_file=None,
    tool="Hyperopt",
    search_seed=None,
):
    r"""Search ``model``'s hyperparameters on ``dataset``; select on validation, report test.

    Args:
        params_file (str): the search space (see :func:`read_params_file`);
            by default ``properties/hyper/<model>.hyper``.
        algo (str): ``exhaustive`` (every combination of ``choice`` parameters;
            ``max_evals`` is ignored), ``random`` or ``bayes`` (TPE).
        max_evals (int): trials of random and bayes search at most.
        early_stop (int): hyperopt stops after this many trials without a better
            valid score; default 10 (RecBole's run_hyper.py), and never for
            exhaustive search, which would otherwise skip combinations.
        config_dict (dict): settings fixed for every trial (the command line's
            ``--key=value``); they may not overlap the searched names.
        output_file (str): where RecBole's text export goes; a JSON of the same
            content is written to ``<output_file>.json``. With Hyperopt, every finished
            trial is also recorded in ``<output_file>.trials.jsonl`` and a rerun skips it.
        tool (str): ``Hyperopt`` (RecBole's ``HyperTuning``) or ``Ray`` (not resumable).
        search_seed (int): seed of the sampler (hyperopt's, or Ray's), for a repeatable search;
            with Hyperopt, by default the config's ``seed``.

    Returns:
        dict: ``best`` (``params``, ``valid_score``, ``valid_result``,
        ``test_result``), ``trials`` (the same for every trial, in run order)
        and the settings of the search.
    """
    if algo not in ALGOS:
        raise ValueError(f"algo = {algo!r}; choose one of {', '.join(ALGOS)}.")
    if tool not in TOOLS:
        raise ValueError(f"tool = {tool!r}; choose one of {', '.join(TOOLS)}.")
    params_file = Path(params_file) if params_file else default_params_file(model)
    params = read_params_file(params_file)
    if algo == "exhaustive":
        continuous = [name for name, (kind, _) in params.items() if kind != "choice"]
        if continuous:
            # RecBole's exhaustive search enumerates choice nodes only and draws
            # the others at random, so "exhaustive" would silently be random.
            raise ValueError(
                f"{params_file}: exhaustive search needs every parameter to be a 'choice'; "
                f"{', '.join(continuous)} is not. Use --algo=random or --algo=bayes, or list its values."
            )
    fixed = dict(config_dict or {})
    config = check_settings(model, dataset, list(params), str(params_file), config_file_list, fixed)
    base = {**fixed, "model": model, "dataset": dataset}

    if tool == "Ray":
        bigger = config["valid_metric_bigger"]
        trials = _ray_search(params, base, config_file_list, algo, max_evals, bigger, search_seed)
    else:
        if search_seed is None:
            search_seed = config["seed"]
        log = None
        if output_file:
            search = {"model": model, "dataset": dataset, "algo": algo, "search_seed": search_seed,
                      "params": params, "fixed": fixed, "config_files": [str(f) for f in config_file_list or []]}
            log = TrialLog(trials_path(output_file), search)
        trials = _hyperopt_search(params, base, config_file_list, algo, max_evals, early_stop, search_seed, log)

    summary = {
        "model": model,
        "dataset": dataset,
        "tool": tool,
        "algo": algo,
        "search_seed": search_seed,
        "params_file": str(params_file),
        "fixed": fixed,
        "valid_metric": config["valid_metric"],
        "valid_score_bigger": config["valid_metric_bigger"],
        "best": best_trial(trials, config["valid_metric_bigger"]),
        "trials": trials,
    }
    if output_file:
        write_tuning_results(summary, output_file)
    return summary


def _hyperopt_search(params, base, config_file_list, algo, max_evals, early_stop, search_seed, log=None):
    trials = []

    def trial_objective(trial_params, fixed_config_file_list):
        recorded = log.get(trial_params) if log is not None else None
        if recorded is not None:
            print(f"trial {_canonical(trial_params)}: recorded in {log.path}, not run again")
            trials.append(recorded)
            return {
                "model": base["model"],
                "best_valid_score": recorded["valid_score"],
                "valid_score_bigger": recorded["valid_score_bigger"],
                "best_valid_result": recorded["valid_result"],
                "test_result": recorded["test_result"],
            }
        result = objective_function({**base, **trial_params}, fixed_config_file_list)
        record = {**_trial_record(trial_params, result), "valid_score_bigger": result["valid_score_bigger"]}
        if log is not None:
            log.add(record)
        trials.append(record)
        return result

    space = hyperopt_space(params)
    if early_stop is None:
        early_stop = _grid_size(params) if algo == "exhaustive" else 10
    tuner = HyperTuning(
        trial_objective,
        space=space,
        fixed_config_file_list=config_file_list,
        algo=algo,
        max_evals=max_evals,
        early_stop=early_stop,
    )
    # HyperTuning.run calls hyperopt's fmin without a random state; fmin then
    # reads its seed from this variable.
    previous = os.environ.get("HYPEROPT_FMIN_SEED")
    if search_seed is not None:
        os.environ["HYPEROPT_FMIN_SEED"] = str(search_seed)  # also what makes a rerun propose the same trials
    try:
        tuner.run()
    finally:
        if search_seed is not None:
            if previous is None:
                os.environ.pop("HYPEROPT_FMIN_SEED", None)
            else:
                os.environ["HYPEROPT_FMIN_SEED"] = previous
    return trials


def _ray_search(params, base, config_file_list, algo, max_evals, bigger, search_seed=None):
    r"""Ray Tune over the same space and objective, selecting on validation as well.

    RecBole's own Ray path (``ray_tune`` in its run_hyper.py) has its
    ``objective_function`` report the test result to Ray and picks the trial
    with the best test Recall@10. Here each trial reports its valid score, the
    one Ray selects on, with the valid and test results beside it.
    ``exhaustive`` is Ray's grid search, ``random`` its random sampling and
    ``bayes`` hyperopt's TPE through ``HyperOptSearch``.
    """
    import importlib.util
    import math

    if importlib.util.find_spec("pyarrow") is None:
        # Ray 2.6.3's tune.run reads its trials' results back through pyarrow
        # ("Uploading, downloading, and deleting from cloud storage requires
        # pyarrow"), a package neither Ray nor RecBole installs.
        raise ImportError("--tool=Ray needs pyarrow, which Ray 2.6.3 does not install: pip install -e '.[ray]'.")
    import ray
    import torch

    tune = import_ray_tune()

    space = {}
    for name, (kind, values) in params.items():
        if kind == "choice":
            space[name] = tune.grid_search(values) if algo == "exhaustive" else tune.choice(values)
        elif kind == "uniform":
            space[name] = tune.uniform(*values)
        elif kind == "quniform":
            space[name] = tune.quniform(*values)
        else:  # loguniform bounds are natural logs in RecBole's params files
            space[name] = tune.loguniform(math.exp(values[0]), math.exp(values[1]))
    mode = "max" if bigger else "min"
    if algo == "bayes":
        from ray.tune.search.hyperopt import HyperOptSearch

        search_alg = HyperOptSearch(metric="valid_score", mode=mode, random_state_seed=search_seed)
    else:
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=search_seed)
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, runtime_env=ray_runtime_env())
    else:
        check_ray_workers()
    try:
        analysis = tune.run(
            tune.with_parameters(
                _ray_trial,
                base=base,
                config_file_list=[os.path.abspath(f) for f in config_file_list or []],
                cwd=os.getcwd(),
            ),
            config=space,
            num_samples=1 if algo == "exhaustive" else max_evals,
            search_alg=search_alg,
            metric="valid_score",
            mode=mode,
            local_dir=os.path.abspath("ray_log"),
            resources_per_trial={"cpu": 1, "gpu": 1 if torch.cuda.is_available() else 0},
            verbose=1,
        )
    finally:
        if started:
            ray.shutdown()
    trials = []
    for trial in analysis.trials:
        result = trial.last_result or {}
        if "valid_score" not in result:
            raise RuntimeError(f"Ray trial {trial} reported no result (status {trial.status}); see {trial.local_path}.")
        trials.append(
            {
                "params": {name: trial.config[name] for name in params},
                "valid_score": result["valid_score"],
                "valid_result": result["valid_result"],
                "test_result": result["test_result"],
            }
        )
    return trials


def _ray_trial(config, base, config_file_list, cwd):
    """One Ray trial: :func:`objective_function` in the driver's folder, reported to Ray."""
    from ray.air import session

    # Ray starts function trials in their own log folder; relative data_path
    # and checkpoint_dir mean the driver's folder, as in a Hyperopt run.
    os.chdir(cwd)
    record = _trial_record(config, objective_function({**base, **config}, config_file_list or None))
    session.report({key: record[key] for key in ("valid_score", "valid_result", "test_result")})


def _grid_size(params):
    size = 1
    for kind, values in params.values():
        size *= len(values) if kind == "choice" else 1
    return size


def _json_default(value):
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    return str(value)


def write_tuning_results(summary, output_file):
    r"""Write ``output_file`` (RecBole's export format, best first) and ``<output_file>.json``."""
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    best = summary["best"]
    blocks = [
        f"Best of {len(summary['trials'])} trials ({summary['model']} on {summary['dataset']}, "
        f"{summary['tool']} {summary['algo']}), selected on valid {summary['valid_metric']}:\n"
        + HyperTuning.params2str(best["params"])
    ]
    for record in [best] + summary["trials"]:
        blocks.append(
            HyperTuning.params2str(record["params"])
            + "\nValid result:\n"
            + dict2str(record["valid_result"])
            + "\nTest result:\n"
            + dict2str(record["test_result"])
        )
    blocks.insert(2, "All trials, in run order:")
    output_file.write_text("\n\n".join(blocks) + "\n")
    json_file = Path(f"{output_file}.json")
    json_file.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return output_file, json_file


def format_best(summary):
    """The lines ``run_hyper.py`` prints: best params, their valid and test results."""
    best = summary["best"]
    return "\n".join(
        [
            f"best params ({len(summary['trials'])} trials, selected on valid {summary['valid_metric']}): "
            + HyperTuning.params2str(best["params"]),
            "best valid result: " + dict2str(best["valid_result"]),
            "its test result:   " + dict2str(best["test_result"]),
        ]
    )


# -- sensitivity (paper Figure 4) ---------------------------------------------------------


def parse_sweep(text):
    r"""``"n_prototypes:16,32,64"`` -> ``("n_prototypes", [16, 32, 64])``."""
    key, sep, values = text.partition(":")
    key = key.strip()
    values = [part.strip() for part in values.split(",") if part.strip()]
    if not sep or not key or not values:
        raise ValueError(f"--sensitivity={text!r}: expected KEY:V1,V2,..., e.g. n_prototypes:16,32,64,128,256.")
    return key, [config_value(value) for value in values]


def sensitivity(
    model,
    dataset,
    key,
    values,
    seeds=None,
    config_file_list=None,
    config_dict=None,
    output_stem=None,
):
    r"""Train ``model`` once per value of ``key`` and seed; tabulate and plot valid and test scores.

    The score is ``valid_metric`` (Recall@20 in this project), on validation
    at the best epoch and on test at that epoch, as the paper's Figure 4.
    Writes ``<stem>.csv`` (one row per run), ``<stem>.md`` (mean and standard
    deviation over seeds per value) and ``<stem>.png``, with ``stem`` by
    default ``sensitivity-<model>-<dataset>-<key>``.

    Returns:
        dict: ``key``, ``metric``, ``runs`` (value, seed, valid, test),
        ``summary`` (per value) and ``files``.
    """
    if key in ("seed", "model", "dataset"):
        raise ValueError(f"Cannot sweep '{key}'; give training seeds with seeds=[...] (--seeds=2020,2021).")
    if not values:
        raise ValueError(f"No values to sweep {key} over.")
    fixed = dict(config_dict or {})
    config = check_settings(model, dataset, [key], f"--sensitivity={key}", config_file_list, fixed)
    metric = config["valid_metric"].lower()
    seeds = list(seeds) if seeds else [config["seed"]]
    runs = []
    for value in values:
        for seed in seeds:
            trial = {**fixed, "model": model, "dataset": dataset, key: value, "seed": seed}
            result = objective_function(trial, config_file_list)
            runs.append(
                {
                    "value": value,
                    "seed": seed,
                    "valid": result["best_valid_result"][metric],
                    "test": result["test_result"][metric],
                }
            )
    summary = [_summarise(value, [run for run in runs if run["value"] == value]) for value in values]
    stem = Path(output_stem or f"sensitivity-{model}-{dataset}-{key}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    files = {
        "csv": _write_runs_csv(runs, key, metric, Path(f"{stem}.csv")),
        "md": _write_summary_md(summary, key, metric, model, dataset, Path(f"{stem}.md")),
        "png": _plot_sweep(summary, key, config["valid_metric"], model, dataset, Path(f"{stem}.png")),
    }
    return {"key": key, "metric": metric, "runs": runs, "summary": summary, "files": files}


def _summarise(value, runs):
    summary = {"value": value, "seeds": len(runs)}
    for split in ("valid", "test"):
        scores = [run[split] for run in runs]
        summary[f"{split}_mean"] = float(np.mean(scores))
        # sample standard deviation over seeds, as the comparison tables; 0 for one seed
        summary[f"{split}_std"] = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    return summary


def _write_runs_csv(runs, key, metric, path):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([key, "seed", f"valid_{metric}", f"test_{metric}"])
        for run in runs:
            writer.writerow([run["value"], run["seed"], run["valid"], run["test"]])
    return path


def _write_summary_md(summary, key, metric, model, dataset, path):
    lines = [
        f"{model} on {dataset}: {metric} against {key} (mean ± std over seeds; test at the best valid epoch)",
        "",
        f"| {key} | seeds | valid {metric} | test {metric} |",
        "|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row['value']} | {row['seeds']} | {row['valid_mean']:.4f} ± {row['valid_std']:.4f} "
            f"| {row['test_mean']:.4f} ± {row['test_std']:.4f} |"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot_sweep(summary, key, metric_name, model, dataset, path):
    # The Agg canvas directly, not pyplot: no display needed, and the caller's
    # matplotlib backend (a notebook's, say) is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.8, 3.4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    # Values sit at even steps, as in the paper's Figure 4 (16, 32, ..., 256).
    positions = list(range(len(summary)))
    for split, marker in (("valid", "o"), ("test", "s")):
        axes.errorbar(
            positions,
            [row[f"{split}_mean"] for row in summary],
            yerr=[row[f"{split}_std"] for row in summary],
            marker=marker,
            capsize=3,
            label=split,
        )
    axes.set_xticks(positions)
    axes.set_xticklabels([str(row["value"]) for row in summary])
    axes.set_xlabel(key)
    axes.set_ylabel(metric_name)
    axes.set_title(f"{model} on {dataset}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    return path

