"""The search service: an HTTP API and a web page over one index directory, with live adds and
deletes (``quantrieve serve``). Built on :class:`quantrieve.Retriever` (model and index in
memory) and :mod:`quantrieve.index.writer` (durable changes)."""

from quantrieve.serve.app import create_app
from quantrieve.serve.service import SearchService, ServeOptions

__all__ = ["SearchService", "ServeOptions", "create_app"]
