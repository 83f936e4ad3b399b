"""`python -m pgsnap ...` runs the CLI (used by tests that need separate processes)."""

from pgsnap.cli import main

main(prog_name="pgsnap")
