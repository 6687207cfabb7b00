"""Data layer: competition layout, zarr/picks I/O, synthetic data, sampling, targets, augmentation."""
