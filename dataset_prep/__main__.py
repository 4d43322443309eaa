"""Command line of ``dataset_prep``.

    python -m dataset_prep NAME --src DIR --out DIR [--layout mmrec|mmssl|diffmm]
        [--feature MOD=FILE[:KEYSFILE] ...] [--allow-partial-features] [--properties-dir DIR]
    python -m dataset_prep ml-100k-mm --out DIR [--src DIR] [--properties-dir DIR]

Bad input ends with one line naming the file, the problem and the fix, and
exit status 2. Warnings (e.g. items without a feature row) go to stderr, one
line each.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from dataset_prep.convert import prepare_dataset
from dataset_prep.errors import DatasetPrepError
from dataset_prep.features import ALLOW_FLAG, MIN_COVERAGE, PATH_RULE, parse_feature_arg
from dataset_prep.known import KNOWN_DATASETS
from dataset_prep.layouts import LAYOUTS, SPLITS
from dataset_prep.ml100k import ML100K_MM, build_ml100k_mm
from dataset_prep.properties import DEFAULT_PROPERTIES_DIR, yaml_path

PROG = "python -m dataset_prep"


class _OneLineParser(argparse.ArgumentParser):
    """Reports usage errors in one line, like every other bad input."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG,
        description="Convert a published multimodal-recommendation dataset into RecBole "
                    "atomic benchmark files, feature matrices and a dataset YAML.",
    )
    parser.add_argument(
        "name",
        help=f"dataset name: {', '.join(KNOWN_DATASETS)}, {ML100K_MM} (the embedded "
             f"default), or any other name with --layout",
    )
    parser.add_argument("--src", type=Path, help="folder holding the published files "
                        f"(for {ML100K_MM}: defaults to the ml-100k inside recbole)")
    parser.add_argument("--out", type=Path, default=Path("dataset"),
                        help="output folder, RecBole's data_path; writes OUT/NAME/ (default: dataset)")
    parser.add_argument("--layout", choices=list(LAYOUTS), help="the published layout "
                        "(default: the known dataset's)")
    parser.add_argument("--feature", action="append", default=[], metavar="MOD=FILE[:KEYSFILE]",
                        help="attach a feature matrix (.npy) as modality MOD, replacing a known "
                             "default of that name; KEYSFILE lists the raw item id of each row; "
                             f"{PATH_RULE}")
    parser.add_argument(ALLOW_FLAG, action="store_true",
                        help=f"say that missing features are real: accept a modality whose keys "
                             f"cover under {MIN_COVERAGE:.0%}% of the items, or a matrix in item id "
                             f"order with rows for items no split file uses and the layout does not "
                             f"declare (refused without it, as the mark of a file of another "
                             f"release); the counts are warned "
                             f"either way, and the YAML then sets allow_partial_features: True "
                             f"where loading needs it")
    parser.add_argument("--properties-dir", type=Path, default=None,
                        help="write the YAML to DIR/dataset/NAME.yaml (default: the project's "
                             f"properties/; for {ML100K_MM}: no YAML unless given)")
    return parser


def _summary(dataset_dir: Path) -> str:
    name = dataset_dir.name
    rows = []
    for split in SPLITS:
        with open(dataset_dir / f"{name}.{split}.inter", encoding="utf-8") as handle:
            rows.append(f"{split} {sum(1 for _ in handle) - 1}")
    features = sorted(path.name for path in dataset_dir.glob("*.npy"))
    return f"wrote {dataset_dir}: {', '.join(rows)} rows; features: {', '.join(features) or 'none'}"


def _run_ml100k(args) -> None:
    if args.layout is not None or args.feature or args.allow_partial_features:
        raise DatasetPrepError(
            f"{ML100K_MM}: is built from RecBole's ml-100k with fixed modalities; drop "
            f"--layout, --feature and {ALLOW_FLAG}"
        )
    dataset_dir = build_ml100k_mm(args.out, args.src, properties_dir=args.properties_dir)
    print(_summary(dataset_dir))
    if args.properties_dir is not None:
        print(f"wrote {yaml_path(args.properties_dir, ML100K_MM)}")
    else:
        # The committed properties/dataset/ml-100k-mm.yaml has no data_path on purpose.
        print(f"run with --data_path={dataset_dir.parent} (the committed "
              f"properties/dataset/{ML100K_MM}.yaml sets no data_path)")


def _run_published(args) -> None:
    if args.src is None:
        raise DatasetPrepError(f"{args.name}: --src is required; pass the folder holding the published files")
    properties_dir = DEFAULT_PROPERTIES_DIR if args.properties_dir is None else args.properties_dir
    features = [parse_feature_arg(text, args.src) for text in args.feature]
    dataset_dir = prepare_dataset(args.name, args.src, args.out, args.layout, features, properties_dir,
                                  allow_partial_features=args.allow_partial_features)
    print(_summary(dataset_dir))
    print(f"wrote {yaml_path(properties_dir, args.name)}")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))
    logger = logging.getLogger("dataset_prep")
    logger.addHandler(warnings)
    try:
        if args.name == ML100K_MM:
            _run_ml100k(args)
        else:
            _run_published(args)
    except (DatasetPrepError, OSError) as exc:
        # OSError covers an unwritable --out or a full disk: input, not a bug.
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(warnings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
