"""Folder of the `forecasting_metrics` evaluate module (a package so that setuptools ships its script)."""
