"""``python -m noisefit_lib.noisefit train|predict``: see :mod:`noisefit_lib.noisefit.cli`.

Explained in: notebooks/part1_noisefit/06_noisefit_on_your_model.py and book/noisefit_library.md
(Command line).
"""

import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from noisefit_lib.noisefit.cli import main

if __name__ == "__main__":
    sys.exit(main())
