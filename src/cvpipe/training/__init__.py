"""Training loops over prepared arrays: checkpoint every epoch, resume, per-epoch metrics."""
