"""``quantrieve serve``: the search service over HTTP, in one process or several."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from quantrieve.cli.options import DeviceOpt
from quantrieve.cli.terminal import console
from quantrieve.config import ConfigError
from quantrieve.errors import QuantrieveError

IndexDirArg = Annotated[Path, typer.Argument(help="Index directory to serve.")]
HostOpt = Annotated[str, typer.Option(help="Address to listen on (loopback by default).")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on.")]
WorkersOpt = Annotated[int, typer.Option(help="Worker processes; more than 1 needs --read-only.")]
ReadOnlyOpt = Annotated[
    bool, typer.Option("--read-only", help="Refuse adds and deletes; take no write lock.")
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        envvar="QUANTRIEVE_API_KEY",
        help="Key that adds and deletes must send (X-API-Key); or QUANTRIEVE_API_KEY.",
        show_default=False,
    ),
]
CorsOriginOpt = Annotated[
    list[str] | None,
    typer.Option("--cors-origin", help="Allow this origin by CORS (repeatable; off if none)."),
]
MaxKOpt = Annotated[int, typer.Option(help="Largest k of a search.")]
MaxBatchOpt = Annotated[int, typer.Option(help="Most queries (or added images) in one request.")]
MaxUploadOpt = Annotated[float, typer.Option(help="Largest request body, in MiB.")]
ThreadsOpt = Annotated[
    int,
    typer.Option(help="torch (or onnxruntime) threads per process; requests run in parallel."),
]
OnnxOpt = Annotated[
    Path | None,
    typer.Option(
        "--onnx",
        help="Embed queries with this encoder (quantrieve export-onnx) by onnxruntime instead "
        "of model.pt by torch; needs --read-only, runs without torch.",
        show_default=False,
    ),
]
LogLevelOpt = Annotated[str, typer.Option(help="debug, info, warning, error.")]


def _check_options(
    workers: int, read_only: bool, max_k: int, max_batch: int, threads: int, max_upload_mb: float
) -> None:
    """Refuse option values the service cannot run with, saying what to do instead."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and not read_only:
        raise ConfigError(
            f"--workers {workers} needs --read-only: with live adds and deletes one process "
            "holds the index in memory and its write lock, so every search sees every "
            "acknowledged change (searches run concurrently in its threads); separate worker "
            "processes would each hold their own copy. Serve changes with one worker, or add "
            "--read-only to spread searches over several processes"
        )
    for name, value in (("--max-k", max_k), ("--max-batch", max_batch), ("--threads", threads)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be > 0, got {max_upload_mb}")


def serve(
    index_dir: IndexDirArg,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    workers: WorkersOpt = 1,
    read_only: ReadOnlyOpt = False,
    api_key: ApiKeyOpt = None,
    cors_origin: CorsOriginOpt = None,
    max_k: MaxKOpt = 100,
    max_batch: MaxBatchOpt = 16,
    max_upload_mb: MaxUploadOpt = 16.0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 1,
    onnx: OnnxOpt = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve an index over HTTP: search by image, item or embedding; add and delete items; a
    web page at /. The index is verified at start and its newest complete version served."""
    import logging
    import os

    try:
        import uvicorn

        from quantrieve.serve import ServeOptions, create_app
        from quantrieve.serve.app import OPTIONS_ENV
    except ImportError as exc:  # a core install: the service's packages are an extra
        raise QuantrieveError(
            f"quantrieve serve needs the service's packages ({exc.name} is missing): "
            "pip install 'quantrieve[serve]'"
        ) from None

    _check_options(workers, read_only, max_k, max_batch, threads, max_upload_mb)
    if onnx is not None and not read_only:
        raise ConfigError(
            "--onnx serves searches only (adds need the index's model.pt to encode images): "
            "add --read-only"
        )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = ServeOptions(
        read_only=read_only,
        api_key=api_key or None,
        cors_origins=tuple(cors_origin or ()),
        max_k=max_k,
        max_batch=max_batch,
        max_upload_bytes=int(max_upload_mb * 2**20),
        device=device,
        torch_threads=threads,
        onnx=None if onnx is None else str(onnx.resolve()),
    )
    application = create_app(index_dir, options)  # verifies the index before binding a port
    console.print(f"quantrieve search service on http://{host}:{port}/ (API: /docs)")
    if workers == 1:
        uvicorn.run(application, host=host, port=port, log_level=log_level.lower())
        return
    application.state.service.close()
    os.environ[OPTIONS_ENV] = json.dumps(
        {
            "index_dir": str(index_dir),
            "options": dataclasses.asdict(options),
            "log_level": log_level,
        }
    )
    uvicorn.run(
        "quantrieve.serve.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.lower(),
    )
