"""The embedded shapes-in-COCO dataset of the detection profile."""
