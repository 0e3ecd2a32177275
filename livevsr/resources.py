"""Where the web viewer (web/) and the CUDA kernel sources (kernels/) are, installed or not.

In the repository both stay at the top level; a wheel carries them inside the package as
``livevsr/_web`` and ``livevsr/_kernels`` (pyproject.toml maps them). An installed package is read
through ``importlib.resources``; a checkout or an editable install falls back to the repository.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """The directory of ``web`` or ``kernels``: the packaged copy if installed, else the checkout's."""
    packaged = resources.files("livevsr").joinpath(f"_{name}")
    if packaged.is_dir():
        # Wheels install unpacked, so the traversable is a real directory (aiohttp serves from a Path).
        return Path(str(packaged))
    return _REPO_ROOT / name
