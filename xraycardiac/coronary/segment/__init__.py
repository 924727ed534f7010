"""Learned vessel segmentation of angiograms (network, inference, training)."""
