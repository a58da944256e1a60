"""Data for training umx: datasets, augmentations and synthetic multitrack music."""
