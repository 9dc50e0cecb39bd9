.PHONY: style quality typecheck test test-slow

check_dirs := balm_hf research scripts tests

style:
	ruff format $(check_dirs)
	ruff check --fix $(check_dirs)

quality:
	ruff check $(check_dirs)
	ruff format --check $(check_dirs)

typecheck:
	mypy balm_hf

test:
	HF_HUB_OFFLINE=1 python -m pytest -q

test-slow:
	HF_HUB_OFFLINE=1 python -m pytest -q -m slow
