"""Torch modules, each named for what it is."""
