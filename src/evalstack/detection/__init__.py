"""The detection profile: boxes, the detections layer, inference, pycocotools metrics, the PerceptionMetrics API."""
