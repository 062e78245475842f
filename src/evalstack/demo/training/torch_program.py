"""Saving a torch.export program so that the same weights give the same bytes anywhere.

`torch.export` records each graph node's Python stack trace — absolute file paths and
line numbers of the code that built the model — in the archive. Two clones at different
paths (or a comment added above the model class) would then train different bytes, and
every stage downstream of the model would rerun after a colleague's `dvc pull`. The
traces are debugging aids only; they are dropped before saving.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from evalstack.core.atomic import atomic_write_bytes


def save_program(program: Any, out: Path) -> None:
    import torch

    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else ():
            node.meta.pop("stack_trace", None)
    # Saved through a buffer: the archive's root folder would otherwise be named after the file.
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(out), buffer.getvalue())
