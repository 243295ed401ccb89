"""Path handling shared by every checkpoint reader/writer."""

from __future__ import annotations

import os

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def orbax_path(path: str | os.PathLike) -> epath.Path:
    """Local paths made absolute (Orbax refuses relative ones); gs:// and other URLs as they are."""
    return epath.Path(path if is_remote(path) else os.path.abspath(path))
