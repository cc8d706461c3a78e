"""Shared pieces of the subcommands."""


class UsageError(Exception):
    """Bad input from the user: `mlops` prints it as one line on stderr and exits with status 2."""
