"""Task metrics as pure functions: classification, detection (pycocotools), segmentation."""
