"""quantrieve: fully unsupervised image retrieval with learned product quantization (HQC, SPQ).

The public API, in full::

    import quantrieve as qr

    qr.Retriever        train, embed, index, search, evaluate, save and load
    qr.PQIndex          PQ codes + codebooks + ids + labels, in memory and on disk
    qr.read_dataset     a dataset folder as named parts (train, test, ...) of ImageSet
    qr.ImageSet         uint8 images (N, H, W, C) with ids, labels and class names
    qr.hold_out         carve held-out queries out of an ImageSet (saved, when given a folder)
    qr.load_config      a preset or config file, with ``section.key=value`` overrides
    qr.RunConfig        the typed run configuration
    qr.QuantrieveError  every error a user can fix (bad input, file or option)

Everything else is reachable through its layer (``quantrieve.pq``, ``quantrieve.models``, ...);
``docs/architecture.md`` maps them.

Importing quantrieve before torch sets ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is set:
OpenMP threads then sleep instead of spinning between parallel regions, so a search on a
machine where another process uses the cores (a training, a second service) keeps its speed
(one query over 4M codes by the gather path, beside a 2-thread training: about 270 ms with
spinning threads, about 50 ms without; benchmarks/busy_search.py). Results are unchanged.
"""

import os
import sys

if "torch" not in sys.modules:  # read once, when OpenMP starts with torch's first import
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("quantrieve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# The public names, imported on first use (PEP 562): ``import quantrieve.errors`` or the
# command line's ``--help`` does not import torch, and neither does a service that embeds
# queries without it.
_PUBLIC = {
    "Retriever": "quantrieve.api.retriever",
    "SearchHit": "quantrieve.api.retriever",
    "SearchResult": "quantrieve.api.retriever",
    "RunConfig": "quantrieve.config",
    "load_config": "quantrieve.config",
    "ImageSet": "quantrieve.data",
    "read_dataset": "quantrieve.data",
    "hold_out": "quantrieve.data.splits",
    "QuantrieveError": "quantrieve.errors",
    "QuantrieveWarning": "quantrieve.errors",
    "RetrievalResult": "quantrieve.evaluate",
    "PQIndex": "quantrieve.index",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'quantrieve' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


if TYPE_CHECKING:
    from quantrieve.api.retriever import Retriever, SearchHit, SearchResult
    from quantrieve.config import RunConfig, load_config
    from quantrieve.data import ImageSet, read_dataset
    from quantrieve.data.splits import hold_out
    from quantrieve.errors import QuantrieveError, QuantrieveWarning
    from quantrieve.evaluate import RetrievalResult
    from quantrieve.index import PQIndex

__all__ = [
    "ImageSet",
    "PQIndex",
    "QuantrieveError",
    "QuantrieveWarning",
    "RetrievalResult",
    "Retriever",
    "RunConfig",
    "SearchHit",
    "SearchResult",
    "__version__",
    "hold_out",
    "load_config",
    "read_dataset",
]
