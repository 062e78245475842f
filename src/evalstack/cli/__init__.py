"""The `evalstack` command: show, verify, why, provenance, gc, store seed/verify, push-run-cache."""
from evalstack.cli.commands import main

__all__ = ["main"]
