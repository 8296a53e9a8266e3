"""Download the wheels a bare GPU machine needs to run chapters with papermill (`make gpu-wheels`).

The GPU image has Python 3.12, torch, transformers, matplotlib and the common utilities, but no
papermill, ipykernel, nbclient or pandas (which the library's reporting layer needs) and no
package index. This script takes the closure of their requirements *at the versions installed
in this venv* (the book's pins), leaves out what the image already provides, and downloads
wheels for CPython 3.12 on x86-64 Linux into the folder given (default `.whl/`).
`tools/gpu_run.sh` installs them there.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.markers import Marker

ROOTS = ("papermill", "ipykernel", "nbclient", "pandas")  # pandas: the reporting layer (stats)
PROVIDED_BY_GPU_IMAGE = {  # read from the image's package list; carrying them would shadow it
    "attrs",
    "certifi",
    "charset-normalizer",
    "click",
    "idna",
    "packaging",
    "psutil",
    "pygments",
    "python-dateutil",
    "pyyaml",
    "requests",
    "tqdm",
    "typing-extensions",
    "urllib3",
    "aiohttp",  # papermill needs it on Python 3.12 only; the image has it and its dependencies
    "numpy",  # torch and matplotlib bring it; pandas must use the image's
}
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def normalise(name: str) -> str:
    """PEP 503 name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...]) -> dict[str, str]:
    """Installed version of every distribution that `roots` need on the GPU machine."""
    found: dict[str, str] = {}
    stack = list(roots)
    while stack:
        name = normalise(stack.pop())
        if name in found or name in PROVIDED_BY_GPU_IMAGE:
            continue
        dist = metadata.distribution(name)
        found[name] = dist.version
        for requirement in dist.requires or []:
            spec, _, marker = requirement.partition(";")
            if marker and ("extra" in marker or not Marker(marker).evaluate(TARGET)):
                continue
            stack.append(re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0])
    return found


def main(folder: str = ".whl") -> None:
    wanted = closure(ROOTS)
    Path(folder).mkdir(exist_ok=True)
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platform_args,
            "-d",
            folder,
            *(f"{n}=={v}" for n, v in sorted(wanted.items())),
        ],
        check=True,
    )
    print(f"{len(wanted)} wheels in {folder}/: {', '.join(sorted(wanted))}")


if __name__ == "__main__":
    main(*sys.argv[1:])
