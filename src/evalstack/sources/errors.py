"""The error every source and item check raises.

In a module of its own because the image checks (`sources/images.py`) are part of what a raw
layer records having been checked by (`fetch/plan.py`): their code part should not take the
registry parser with it, so an edit there does not re-check every stored image.
"""
from __future__ import annotations


class SourceError(RuntimeError):
    """A source or one of its items cannot be used; the message names the item."""
