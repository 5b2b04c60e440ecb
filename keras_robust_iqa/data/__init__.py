"""IQA datasets (official file formats, validated) and tf.data pipelines.

Readers return an `IQATable`; `make_dataset` turns one into a tf.data pipeline.
`load_table(name, data_dir)` picks the reader by name. The pipeline functions are loaded
on first use. (Importing `keras_robust_iqa` itself imports TensorFlow: it registers the
package's Keras classes so that `.keras` files load in safe mode.)
"""

from __future__ import annotations

from .builtin import build_builtin, read_builtin
from .csv_reader import read_csv, resolve_csv
from .errors import DataError, DataWarning
from .kadid10k import read_kadid10k
from .koniq10k import read_koniq10k
from .livec import read_livec
from .spaq import read_spaq
from .splits import split_groups
from .table import SPLITS, IQATable
from .tid2013 import read_tid2013

READERS = {
    "builtin": read_builtin,
    "koniq10k": read_koniq10k,
    "kadid10k": read_kadid10k,
    "livec": read_livec,
    "tid2013": read_tid2013,
    "spaq": read_spaq,
    "csv": read_csv,
}


def load_table(name: str, data_dir=None, **kwargs) -> IQATable:
    """Read dataset `name` from `data_dir` (keyword arguments go to its reader).

    `builtin`: `data_dir` is the cache folder (optional). `csv`: a CSV file or a folder
    holding `mos.csv`. Every other dataset needs its folder.
    """
    key = str(name).lower()
    if key not in READERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(READERS)}")
    if key == "builtin":
        return read_builtin(data_dir, **kwargs)
    if data_dir is None:
        hint = "a CSV file or a folder holding mos.csv" if key == "csv" else "its data folder"
        raise ValueError(f"dataset {key!r} needs data_dir ({hint})")
    return READERS[key](data_dir, **kwargs)


_LAZY = {"make_dataset", "load_images", "iter_images", "read_image", "decode_image", "image_sizes", "AUGMENTATIONS"}


def __getattr__(attr):
    if attr in _LAZY:
        from . import pipeline

        return getattr(pipeline, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = [
    "AUGMENTATIONS", "DataError", "DataWarning", "IQATable", "READERS", "SPLITS", "build_builtin",
    "decode_image", "image_sizes", "iter_images", "load_images", "load_table", "make_dataset",
    "read_builtin", "read_csv", "read_image", "read_kadid10k", "read_koniq10k", "read_livec", "read_spaq",
    "read_tid2013", "resolve_csv", "split_groups",
]
