"""Compute: specs, data, models, training, pruning, landscape metrics, cells and grids."""
