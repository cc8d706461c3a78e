"""Subcommands of the `mlops` command, one module each.

Each module defines ``register(subparsers)`` which adds its parser and sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit status). Modules must import only
the standard library at import time so that ``mlops --help`` stays fast; heavy imports go inside
the function that runs the command.
"""
