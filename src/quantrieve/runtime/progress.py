"""The one progress protocol of library code: a callback ``progress(done, total)``.

Library functions that take a while accept ``progress: Progress | None``. They call it with the
number of units done so far and the total (images decoded, images embedded, queries evaluated,
training steps), at least once at the end, with ``done == total``. They never draw anything:
only the command line turns these calls into bars (:mod:`quantrieve.cli.terminal`).
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]


def report(progress: Progress | None, done: int, total: int) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(done, total)


ProgressFactory = Callable[[str], Progress]
"""For code that runs several named steps (the demo, a benchmark grid): returns the
``progress(done, total)`` callback of the step it is given the name of."""
