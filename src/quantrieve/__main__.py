"""``python -m quantrieve``: the command line."""

from quantrieve.cli import main

main()
