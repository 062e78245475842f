"""Where items come from: registry CSV, PAD API, local folder, COCO; HTTP/file transport; image checks."""
