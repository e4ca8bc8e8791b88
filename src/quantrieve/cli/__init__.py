"""The ``quantrieve`` command: train, encode, search, evaluate, baseline, export, demo.

Argument parsing and printing over the Python API (:class:`quantrieve.Retriever`,
:func:`quantrieve.api.run_images`), nothing else: one module per command (``train``,
``encode``, ``search``, ``embed``, ``evaluate``, ``baseline``, ``export``, ``serve``,
``index_tools``, ``demo``, ``benchmark``), the options they share in :mod:`.options`, the
terminal in :mod:`.terminal`; this module assembles them into one Typer app.

Errors a user can fix (:class:`~quantrieve.errors.QuantrieveError`: a bad config key, a missing
file, a malformed dataset) are printed as one line naming the file, line or key at fault, with
exit code 2; any other exception is a bug and shows its traceback. Warnings about the user's data
or run (:class:`~quantrieve.errors.QuantrieveWarning`) are printed in yellow.
"""

from __future__ import annotations

import warnings
from typing import Any

import typer

from quantrieve.cli import (
    baseline,
    benchmark,
    demo,
    duplicates,
    embed,
    encode,
    evaluate,
    export,
    folder_sync,
    index_tools,
    search,
    serve,
    train,
)
from quantrieve.cli.terminal import console, stdout
from quantrieve.errors import QuantrieveError, QuantrieveWarning
from quantrieve.runtime.placement import from_environment

app = typer.Typer(
    add_completion=True,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Fully unsupervised image retrieval with learned product quantization (HQC).",
)

# In the order `quantrieve --help` lists them.
app.command()(train.train)
app.command()(encode.encode)
app.command()(search.search)
app.command()(embed.embed)
app.command()(evaluate.evaluate)
app.command()(baseline.baseline)
app.command("export-faiss")(export.export_faiss)
app.command("export-onnx")(export.export_onnx)
app.command()(serve.serve)
app.command()(folder_sync.add)
app.command()(folder_sync.sync)
app.command()(index_tools.compact)
app.command()(duplicates.duplicates)
app.command()(train.presets)
app.command()(demo.demo)
app.command()(benchmark.benchmark)
app.command()(benchmark.protocols)


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


def main() -> None:
    """Entry point of the ``quantrieve`` command."""
    if from_environment().rank != 0:
        # Under torchrun, rank 0 alone talks (every rank runs the same command).
        console.quiet = stdout.quiet = True
        warnings.simplefilter("ignore", QuantrieveWarning)
    else:
        warnings.simplefilter("always", QuantrieveWarning)
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        app()
    except QuantrieveError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]; finished epochs are saved, use --resume")
        raise SystemExit(130) from None
    finally:
        warnings.showwarning = previous


__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
