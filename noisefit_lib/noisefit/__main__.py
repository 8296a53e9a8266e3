"""``python -m noisefit_lib.noisefit train|predict``: see :mod:`noisefit_lib.noisefit.cli`."""

import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from noisefit_lib.noisefit.cli import main

if __name__ == "__main__":
    sys.exit(main())
