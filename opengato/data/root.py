"""Where the data lives, and the error for data on disk that is missing or damaged.

The data root (an argument, else `$OPENGATO_DATA`, else `~/.opengato/data`, read when used)::

    <root>/minari/opengato/<suite>-<Env>-v0/   one Minari dataset per task (episodes.py)
        data/main_data.hdf5, data/metadata.json  (Minari's own files)
        opengato.json                            (generator hash, seeds, returns, successes)
    <root>/scores.json                           expert and random score per task (scores.py)
    <root>/text/*.parquet, <root>/vision/*.parquet, <root>/corpora.json   (corpora.py)
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = "~/.opengato/data"
"""The data root when neither an argument nor `$OPENGATO_DATA` names one."""


class DatasetError(RuntimeError):
    """A dataset on disk is missing, corrupt or not what was asked for."""


def data_root(data_dir: str | Path | None = None) -> Path:
    """The data root, absolute: the argument, else `$OPENGATO_DATA`, else `~/.opengato/data`.
    (Absolute because Minari joins relative dataset paths onto themselves.)"""
    if data_dir is None:
        data_dir = os.environ.get("OPENGATO_DATA") or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser().absolute()
