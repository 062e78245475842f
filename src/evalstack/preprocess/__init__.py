"""The preprocess stage: raw layer → model-ready tensors (pipelines, PAD regions, letterbox, perturbations)."""
