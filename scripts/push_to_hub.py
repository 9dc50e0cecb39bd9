"""Push a trained BALM-TSF folder to the Hugging Face Hub: a thin CLI over `balm_hf.hub.push_folder_to_hub`.

Example:

    python scripts/push_to_hub.py --folder runs/etth1_96 --repo-id me/balm-tsf-etth1-96 --dry-run
    python scripts/push_to_hub.py --folder runs/etth1_96 --repo-id me/balm-tsf-etth1-96 --private
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from balm_hf.cli import add_push_arguments, run_push


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_push_arguments(
        argparse.ArgumentParser(
            description="Validate a trained folder, render its model card and upload it to a Hub model repository."
        )
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run_push(args)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError, OSError) as error:
        sys.stderr.write(f"push_to_hub: error: {error}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
