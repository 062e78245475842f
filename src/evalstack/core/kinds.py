"""Layer kinds: what a layer's index says it holds. Constants only, so importing one costs nothing."""

RAW_KIND = "raw"  # fetch: encoded image bytes + the source's metadata
PREPROCESSED_KIND = "preprocessed"  # preprocess: model-ready tensors or feature vectors
PREDICTIONS_KIND = "predictions"  # infer: label, probability, energy, logits per item
DETECTIONS_KIND = "detections"  # detection postprocess: boxes, labels, scores per image (flat + offsets)
CANDIDATES_KIND = "detection_candidates"  # detection infer/grid: raw candidates per image, before threshold and NMS

# What the raw layer stores about an item besides its bytes (a source's RegistryRow has these fields).
META_FIELDS = ("id", "sample_id", "sample_name", "quantity", "camera_type_1", "url", "hashlib_md5", "image_name", "split")
