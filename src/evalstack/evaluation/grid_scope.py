"""Which models get a perturbation grid. Apart from the grid itself so that a robustness stage
with nothing to do (a concentration model, a feature pipeline) imports no perturbation code."""
from __future__ import annotations


def why_no_grid(task: str, output_shape: tuple[int, ...]) -> str | None:
    """Why a model gets no perturbation grid, or None when it does.

    Perturbations act on images and the grid's metrics on class labels, so feature
    pipelines (PLS regions) and concentration models are left out, with a reason.
    """
    if task != "classify":
        return f"task {task}: the grid measures classification accuracy"
    if len(output_shape) != 3:
        return f"its pipeline yields features of shape {tuple(output_shape)}, not an image to perturb"
    return None
