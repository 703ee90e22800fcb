"""``python -m landcover.cli``: the command line."""

from landcover.cli import main

main()
