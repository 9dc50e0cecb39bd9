.PHONY: style quality typecheck test test-slow

check_dirs := balm_hf research scripts tests

style:
	ruff format $(check_dirs)
	ruff check --fix $(check_dirs)

# What CI (.ci/run) checks before the tests.
quality:
	ruff format --check $(check_dirs)
	ruff check $(check_dirs)
	mypy balm_hf tests

typecheck:
	mypy balm_hf tests

test:
	HF_HUB_OFFLINE=1 python -m pytest -q

test-slow:
	HF_HUB_OFFLINE=1 python -m pytest -q -m slow
