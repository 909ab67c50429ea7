"""The `statecast` command line."""

__all__ = ["main"]

from statecast.cli import main
