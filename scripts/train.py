#!/usr/bin/env python
r"""Train and test one BALM-TSF experiment and save the Hub-ready folder: `balm-tsf train` as a script.

This file exists for `accelerate launch`, which takes a script path:

    # paper experiment, one or several GPUs (see configuration/accelerate/)
    accelerate launch --config_file configuration/accelerate/one_gpu.yaml scripts/train.py \
        --config configuration/long_term/etth1_96.yaml
    # the same options as `balm-tsf train` (run `python scripts/train.py --help`)
    python scripts/train.py --data my.csv --target OT --set training.num_train_epochs=2
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from balm_hf.cli import main as balm_tsf_main


def main(argv: Sequence[str] | None = None) -> int:
    """`balm-tsf train` with the arguments `argv` (default: the command line)."""
    return balm_tsf_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
