"""Output paths that never cost the user a file.

Every command that writes checks its output first: a new path or an empty folder is fine; a
folder that already holds the command's own kind of output (told by a marker file) is continued
or replaced only when the user asks (``--resume`` / ``--overwrite``); anything else (a training
run where an index should go, a folder of the user's files, a file where a folder should go) is
refused with a message that says why and what to do instead. Nothing is ever deleted that the
command did not write itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from quantrieve.errors import OutputError
from quantrieve.runtime.atomic import current_umask


@dataclass(frozen=True)
class OutputKind:
    """One kind of output folder.

    Attributes:
        name: What it is, in words ("index", "training run", ...).
        marker: File whose presence makes a folder one of this kind.
        is_own: Optional stricter check on the marker (e.g. its format field).
    """

    name: str
    marker: str
    is_own: Callable[[Path], bool] | None = None

    def holds(self, folder: Path) -> bool:
        """Whether ``folder`` is an output of this kind."""
        marker = folder / self.marker
        if not marker.is_file():
            return False
        return self.is_own is None or self.is_own(folder)


def folder_state(path: Path, kind: OutputKind) -> str:
    """``missing``, ``empty``, ``own`` (holds this kind of output) or ``other``; raises for a
    path that exists but is not a folder."""
    if not path.exists() and not path.is_symlink():
        return "missing"
    if not path.is_dir():
        raise OutputError(
            f"{path} exists and is not a folder; the {kind.name} needs a folder of its own: "
            "choose another path"
        )
    if not any(path.iterdir()):
        return "empty"
    return "own" if kind.holds(path) else "other"


def _describe(path: Path, limit: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )
    return shown


def refuse_foreign(path: Path, kind: OutputKind, hint: str = "") -> None:
    """Raise unless ``path`` is missing, empty or already a ``kind`` output."""
    if folder_state(path, kind) == "other":
        raise OutputError(
            f"{path} is not empty and is not a {kind.name} (it holds {_describe(path)}); "
            f"nothing there is touched. Write the {kind.name} to a new folder"
            + (f", e.g. {hint}" if hint else "")
        )


def replace_folder(
    path: str | Path,
    kind: OutputKind,
    write: Callable[[Path], None],
    overwrite: bool = False,
    own_names: Iterable[str] | None = None,
) -> Path:
    """Write a complete ``kind`` folder at ``path`` through a temporary sibling, then swap.

    Args:
        path: Destination folder.
        kind: What the folder is.
        write: Fills the temporary folder it is given.
        overwrite: Replace an existing ``kind`` folder (else it is refused).
        own_names: The file names a ``kind`` folder may hold; an existing folder holding other
            names is refused even with ``overwrite`` (they are not ours to delete).

    The new version is written completely before the old one is moved aside; the old one is
    removed only after the swap, and only the files it was made of.

    Raises:
        OutputError: the path holds something else, or an existing output without
            ``overwrite``.
    """
    path = Path(path)
    state = folder_state(path, kind)
    if state == "other":
        refuse_foreign(path, kind)
    if state == "own":
        if not overwrite:
            raise OutputError(
                f"{path} already holds a {kind.name}; pass --overwrite to replace it "
                "(the new one is written completely before the old one is removed)"
            )
        if own_names is not None:
            allowed = set(own_names)
            foreign = sorted(p.name for p in path.iterdir() if p.name not in allowed)
            if foreign:
                raise OutputError(
                    f"{path} holds files that are not part of a {kind.name} "
                    f"({', '.join(foreign[:4])}); move them out before replacing it"
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if state == "empty":
        path.rmdir()
    old: Path | None = None
    if state == "own":
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        _remove_own(old / path.name, own_names)
        old.rmdir()
    return path


def _remove_own(folder: Path, own_names: Iterable[str] | None) -> None:
    """Delete a replaced output: only the names it may hold, then the folder if empty."""
    names = set(own_names) if own_names is not None else {p.name for p in folder.iterdir()}
    for name in names:
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    folder.rmdir()


def check_new_file(path: str | Path, overwrite: bool = False, what: str = "file") -> Path:
    """Refuse to replace an existing file unless ``overwrite``; never replace a folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name for the {what}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it")
    return path
