"""Shipped sample images, their ground-truth labels and the default nuclei model (see README.md)."""
