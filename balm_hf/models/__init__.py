"""The models of the package: one folder per model, each the unit a saved checkpoint carries as remote code."""
