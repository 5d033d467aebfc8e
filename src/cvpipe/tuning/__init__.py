"""Operating points chosen on the validation split, reported on test."""
