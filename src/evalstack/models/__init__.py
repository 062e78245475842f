"""The infer stage: model adapters (one per framework), the predictions layer, latency."""
