"""``quantrieve train`` and ``quantrieve presets``: train an encoder from a preset or config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from quantrieve.cli.options import data_dir_option, out_option, set_option
from quantrieve.cli.terminal import console, print_epoch, progress_bar
from quantrieve.config import TRAINED_METHODS, load_config, preset_names, settings_from_text
from quantrieve.runtime.placement import from_environment

OutOpt = out_option("Run directory.")
SetOpt = set_option("Override, e.g. --set train.epochs=30.")
DataDirOpt = data_dir_option("Dataset folder (data.root).")
PresetOpt = Annotated[str | None, typer.Option(help="Named preset (see `quantrieve presets`).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML or JSON config.")]
BitsOpt = Annotated[int | None, typer.Option(help="Code length; sets model.num_books.")]
MethodOpt = Annotated[str | None, typer.Option(help=f"Method: {', '.join(TRAINED_METHODS)}.")]
DatasetOpt = Annotated[
    str | None, typer.Option(help="Dataset reader, e.g. image-folder (data.dataset).")
]
ImageSizeOpt = Annotated[
    int | None,
    typer.Option(help="Side images are decoded to, for image files (data.image_size)."),
]
ChannelsOpt = Annotated[
    int | None,
    typer.Option(help="Image folders: 1 (grayscale) or 3 (RGB); default the data's own."),
]
EpochsOpt = Annotated[int | None, typer.Option(help="Training epochs (train.epochs).")]
SkipBadOpt = Annotated[
    bool,
    typer.Option(
        "--skip-bad",
        help="Leave unreadable images out (listed in run.json) instead of stopping "
        "(data.skip_bad).",
    ),
]
HoldoutOpt = Annotated[
    int | None,
    typer.Option(
        help="Hold out N images as test queries (a folder without a test part); saved "
        "with the run, never trained on (data.holdout_queries)."
    ),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")]
RestartsOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Train N seeds (train.seed, +1, ...) into OUT/restarts/ and keep the one with the "
        "best validation score in OUT (small collections, where seeds differ; N times the "
        "training time).",
    ),
]


def train(
    out: OutOpt = Path("runs/train"),
    preset: PresetOpt = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
    bits: BitsOpt = None,
    method: MethodOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    epochs: EpochsOpt = None,
    skip_bad: SkipBadOpt = False,
    holdout: HoldoutOpt = None,
    resume: ResumeOpt = False,
    restarts: RestartsOpt = 1,
) -> None:
    """Train an encoder from scratch, without labels. Writes model.pt (the epoch kept by
    validation: mAP@K, or train.labelled_select)."""
    from quantrieve.api import Retriever, run_parts
    from quantrieve.runtime.distributed import shutdown
    from quantrieve.train.trainer import TrainingError

    # Restarts resume restart by restart, each from its own checkpoint and with the options
    # given again (a checkpoint refuses a config that differs from its own).
    if restarts > 1 and from_environment().world_size > 1:
        raise TrainingError(
            "--restarts trains its seeds one after another in one process; under torchrun, "
            "train each seed as its own run (--set train.seed=N)"
        )
    if resume and restarts == 1:
        if preset is not None or config_file is not None:
            raise TrainingError(
                "--resume continues with the run's saved config.json; drop --preset / --config "
                "(or start a new run in another --out)"
            )
        config_file = out / "config.json"
        if not config_file.is_file():
            raise TrainingError(f"--resume given but {config_file} does not exist")
    options: dict[str, Any] = {
        "data.dataset": dataset,
        "data.root": str(Path(data_dir).resolve()) if data_dir else None,
        "data.image_size": image_size,
        "data.channels": channels,
        "train.epochs": epochs,
        "data.holdout_queries": holdout,
        "data.skip_bad": True if skip_bad else None,
    }
    settings = {key: value for key, value in options.items() if value is not None}
    settings.update(settings_from_text(overrides or []))  # the user's --set wins
    retriever = Retriever.from_preset(
        preset, bits=bits, method=method, config_file=config_file, overrides=settings
    )
    config = retriever.config
    if preset is not None and (note := _preset_made_for_other_data(preset, config.data.dataset)):
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(
        f"training {config.model.backbone} / {config.loss.preset}, {config.model.bits} bits "
        f"(M={config.model.num_books}, K={config.model.num_codewords}), "
        f"{config.train.epochs} epochs on {config.data.dataset} at {config.data.root} -> {out}"
    )
    # The trainer carves the held-out queries (data.holdout_queries) out of the training part.
    train_set = run_parts(retriever, held_out=False, progress=progress_bar("decoding images")).get()
    if restarts > 1:
        _fit_restarts(retriever, train_set, out, restarts, resume)
        shutdown(from_environment())
        return
    if resume:
        from quantrieve.runtime.checkpoint import load_checkpoint

        done = load_checkpoint(out / "last.pt")["epoch"]
        console.print(f"resuming {out} at epoch {done + 1} of {config.train.epochs} ({done} done)")
    retriever.fit(
        train_set,
        run_dir=out,
        resume=resume,
        progress=progress_bar("training"),
        on_epoch=lambda s: print_epoch(s, config.train.epochs),
    )
    shutdown(from_environment())
    console.print(f"done: model {out / 'model.pt'}, log {out / 'log.jsonl'}")


def _preset_made_for_other_data(preset: str, dataset: str) -> str | None:
    """What to say when a preset made for a named dataset trains on an image folder: its
    schedule, batch and validation size were chosen for that dataset, not for the folder."""
    made_for = load_config(preset).data.dataset
    if dataset != "image-folder" or made_for == dataset:
        return None
    return (
        f"the {preset} preset was made for the {made_for} dataset (its schedule, batch and "
        "validation queries); for a folder of your own images, --preset small-collection-cpu "
        "is the one measured on folders (README, 'Your own images'; docs/results.md, 'A "
        "folder of 5,000 handwritten digits')"
    )


def _fit_restarts(retriever: Any, train_set: Any, out: Path, count: int, resume: bool) -> None:
    """``--restarts N``: the run's config with train.seed = seed, seed + 1, ...; the best by
    validation is copied into ``out`` (:mod:`quantrieve.api.restarts`)."""
    from quantrieve.api.restarts import best_restart, fit_restarts, restart_seeds
    from quantrieve.config import apply_overrides

    config = retriever.config
    seeds = restart_seeds(config.train.seed, count)

    def config_for(seed: int) -> Any:
        return apply_overrides(config, {"train.seed": seed})

    def report(restart: Any) -> None:
        console.print(
            f"restart seed {restart.seed}: kept epoch {restart.best_epoch}, "
            f"{restart.metric} {restart.score:.4f} ({restart.run_dir})"
        )

    _, done = fit_restarts(
        config_for,
        train_set,
        out,
        seeds,
        resume=resume,
        progress=progress_bar("training"),
        on_epoch=lambda s: print_epoch(s, config.train.epochs),
        on_restart=report,
    )
    chosen = best_restart(done)
    console.print(
        f"done: kept seed {chosen.seed} of {len(done)} ({chosen.metric} {chosen.score:.4f}): "
        f"model {out / 'model.pt'}, every restart in {out / 'restarts'}"
    )


def presets() -> None:
    """List the shipped presets."""
    for name in preset_names():
        config = load_config(name)
        console.print(
            f"{name}: {config.data.dataset}, {config.model.backbone} (width {config.model.width}), "
            f"{config.model.bits} bits, {config.loss.preset}, {config.train.epochs} epochs"
        )
