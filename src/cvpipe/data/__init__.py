"""Datasets: the synthetic generator, importers, validation, preparation and array-backed datasets."""
