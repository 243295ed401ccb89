"""Config files are loaded by path (ml_collections `config_flags`), so a config reaches its
siblings (configs/base.py, a shared recipe) by path too, never through `import configs`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any


def load_module(path: str | Path) -> ModuleType:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_marco_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sibling(config_file: str, name: str) -> ModuleType:
    """The module `<dir of config_file>/<name>.py`; call as `load_sibling(__file__, "base")`."""
    return load_module(Path(config_file).resolve().with_name(f"{name}.py"))


def load_config(path: str | Path, arg: str | None = None) -> Any:
    """`get_config()` of a config file (as config_flags would, minus command-line overrides)."""
    module = load_module(path)
    return module.get_config(arg) if arg is not None else module.get_config()
