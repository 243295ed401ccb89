"""Validate a config (ml_collections ConfigDict, dict or `Experiment`) into the typed schema, and
apply `--config.<key>=<value>` overrides. Every error is one `ConfigError` line naming the key,
the value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from marco_jax.config.schema import CHOICES, MAXIMA, MINIMA, Experiment


class ConfigError(ValueError):
    """Bad config input: unknown key, wrong type or out-of-range value (CLIs exit 2)."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def _unknown_key(path: str, key: str, known: Sequence[str]) -> ConfigError:
    near = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    where = f"{path}.{key}" if path else key
    return ConfigError(f"config key {where!r} does not exist{hint}; "
                       f"{path or 'the config'} has: {', '.join(sorted(known))}")


def _scalar_from_text(text: str) -> Any:
    """A command-line value for an untyped map entry: bool, int, float or the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """`value` as type `tp`; strings (command line) are parsed, Python values checked."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _scalar_from_text(value) if isinstance(value, str) else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise ConfigError(f"{path}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{path}={value!r}: expected an integer") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}={value!r}: expected an integer")
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{path}={value!r}: expected a number") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}={value!r}: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}={value!r}: expected a string")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}={value!r}: expected a list (a,b,c on the command line)")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        value_tp = typing.get_args(tp)[1]
        if isinstance(value, str):
            value = _parse_map(value, path)
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}={value!r}: expected a map (k=v,k=v on the command line)")
        return {str(k): _coerce(value_tp, v, f"{path}.{k}") for k, v in value.items()}
    raise TypeError(f"schema type {tp!r} of {path} is not supported")


def _parse_map(text: str, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, val = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}={text!r}: expected entries key=value separated by commas")
        out[key.strip()] = val.strip()
    return out


def _build(cls: type, values: Mapping[str, Any], path: str) -> Any:
    hints = _hints(cls)
    unknown = [k for k in values if k not in hints]
    if unknown:
        raise _unknown_key(path, unknown[0], list(hints))
    kwargs = {}
    for key, tp in hints.items():
        if key not in values:
            continue
        where = f"{path}.{key}" if path else key
        value = values[key]
        if _is_section(tp):
            if isinstance(value, tp):
                value = dataclasses.asdict(value)
            if hasattr(value, "to_dict"):
                value = value.to_dict()
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: expected a section (a map of keys), got {value!r}")
            kwargs[key] = _build(tp, value, where)
        else:
            kwargs[key] = _coerce(tp, value, where)
    return cls(**kwargs)


def _check_ranges(exp: Experiment) -> None:
    for key, accepted in CHOICES.items():
        value = _get(exp, key)
        if value not in accepted:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(repr, accepted))}")
    for key, low in MINIMA.items():
        value = _get(exp, key)
        if value < low:
            raise ConfigError(f"{key}={value!r}: expected >= {low:g}")
    for key, high in MAXIMA.items():
        value = _get(exp, key)
        if value > high:
            raise ConfigError(f"{key}={value!r}: expected < 1")
    if exp.data.global_batch_size % exp.optim.grad_accum_steps:
        raise ConfigError(f"data.global_batch_size={exp.data.global_batch_size} is not divisible "
                          f"by optim.grad_accum_steps={exp.optim.grad_accum_steps}")


def _get(exp: Experiment, dotted: str) -> Any:
    obj: Any = exp
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def to_experiment(config: Any) -> Experiment:
    """Validate `config` (ConfigDict, nested dict or Experiment) into an `Experiment`."""
    if isinstance(config, Experiment):
        return config
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ConfigError(f"a config must be a ConfigDict, a dict or an Experiment, got "
                          f"{type(config).__name__}")
    exp = _build(Experiment, config, "")
    _check_ranges(exp)
    return exp


def apply_overrides(exp: Experiment, overrides: Sequence[tuple[str, str]]) -> Experiment:
    """Apply (dotted key, text value) pairs, e.g. ("optim.peak_lr", "3e-5"). A key that runs past
    a map field names an entry of that map: ("data.shares.english", "0.4")."""
    tree = dataclasses.asdict(exp)
    for dotted, text in overrides:
        _set(tree, Experiment, dotted.split("."), text, "")
    result = to_experiment(tree)
    return result


def _set(tree: dict, cls: type, parts: list[str], text: str, path: str) -> None:
    hints = _hints(cls)
    key = parts[0]
    where = f"{path}.{key}" if path else key
    if key not in hints:
        raise _unknown_key(path, key, list(hints))
    tp = hints[key]
    rest = parts[1:]
    if _is_section(tp):
        if not rest:
            raise ConfigError(f"{where} is a section; set one of its keys, e.g. "
                              f"--config.{where}.{next(iter(_hints(tp)))}=...")
        _set(tree[key], tp, rest, text, where)
    elif typing.get_origin(tp) is dict:
        if rest:  # one entry; the entry name may contain dots (task names like web.en)
            entry = ".".join(rest)
            value_tp = typing.get_args(tp)[1]
            tree[key] = {**tree[key], entry: _coerce(value_tp, text, f"{where}.{entry}")}
        else:
            tree[key] = _coerce(tp, text, where)
    else:
        if rest:
            raise _unknown_key(where, rest[0], [])
        tree[key] = _coerce(tp, text, where)


# -- config files -----------------------------------------------------------------------------

def load_module(path: str | Path) -> ModuleType:
    """Import a config file by path (config files reach their siblings by path, never through
    an `import configs`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_marco_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sibling(config_file: str, name: str) -> ModuleType:
    """The module `<dir of config_file>/<name>.py`; call as `load_sibling(__file__, "base")`."""
    return load_module(Path(config_file).resolve().with_name(f"{name}.py"))


def load_config_file(spec: str | Path, overrides: Sequence[tuple[str, str]] = ()) -> Experiment:
    """`get_config()` of a config file (`path` or `path:arg`, as ml_collections' config_flags),
    validated, with command-line overrides applied."""
    path, _, arg = str(spec).partition(":")
    module = load_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    try:
        return apply_overrides(to_experiment(config), overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
