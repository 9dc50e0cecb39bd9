"""Research tooling outside the wheel: baselines, the comparison runner, the benchmark and their committed results.

Run from the repository root: `python -m research.compare ...`, `python -m research.benchmark ...`.
"""
