"""cvpipe: reproducible DVC + MLflow pipeline for convolutional vision models."""
