"""Data loaders: image benchmarks (MNIST, Fashion-MNIST, CIFAR-10) and tabular tables.

Images come back as torch tensors ``((X_train, y_train), (X_test, y_test))``; tables as a
:class:`Table` of numpy arrays, encoded by :class:`Preprocessing` (:mod:`.preprocessing`, the
encoding ``occamgd fit`` stores too). Both plug straight into ``occamgd.fit(model, train, test=test)``.
"""

from .images import ChecksumError, cache_dir, data_dirs, load_cifar10, load_fashion_mnist, load_mnist, read_idx
from .preprocessing import Preprocessing, as_text, infer_task, read_csv
from .tabular import Table, TableSpec, default_manifest, load_openml, load_table, read_manifest, table_from_frame
from .text import CharCorpus, download_tinyshakespeare, find_tinyshakespeare, get_batch, load_text

__all__ = [
    "ChecksumError",
    "Preprocessing",
    "Table",
    "TableSpec",
    "as_text",
    "cache_dir",
    "data_dirs",
    "default_manifest",
    "infer_task",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "load_openml",
    "load_table",
    "read_csv",
    "read_idx",
    "read_manifest",
    "table_from_frame",
]
__all__ += ["CharCorpus", "download_tinyshakespeare", "find_tinyshakespeare", "get_batch", "load_text"]
