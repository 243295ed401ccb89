"""Pick JAX's platforms before JAX is imported, so machines without TPU chips stay quiet.

With libtpu installed (the `tpu` extra, for ahead-of-time TPU compiles) and JAX_PLATFORMS unset,
JAX's first backend use initialises the TPU runtime even where no chip exists, and libtpu prints
"unexpected worker hostname" / "Failed to find host bounds" errors. When this machine has no TPU
device we name the other platforms explicitly. A TPU VM, an explicit JAX_PLATFORMS and a machine
without libtpu are left exactly as they are. Standard library only: this runs before `import jax`.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Mapping, MutableMapping
from importlib.metadata import entry_points
from pathlib import Path

# JAX's own TPU detection (jax/_src/hardware_utils.py): Google's PCI vendor id with a TPU device id.
_GOOGLE_PCI_VENDOR_ID = "0x1ae0"
_TPU_PCI_DEVICE_IDS = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}
# jax_plugins module name prefix -> the platform name the plugin registers
_PLUGIN_PLATFORMS = {"xla_cuda": "cuda", "jax_cuda": "cuda", "xla_rocm": "rocm",
                     "jax_rocm": "rocm"}


def tpu_device_present() -> bool:
    """True when TPU chips are attached: device files (/dev/accel*, /dev/vfio/N) or a TPU on the
    PCI bus. Without importing libtpu (importing it is what triggers the probe)."""
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if Path(vendor).read_text().strip() != _GOOGLE_PCI_VENDOR_ID:
                continue
            if (Path(vendor).parent / "device").read_text().strip() in _TPU_PCI_DEVICE_IDS:
                return True
        except OSError:
            continue
    return False


def _installed_plugin_names() -> list[str]:
    """Names of the installed JAX PJRT plugins (namespace package `jax_plugins` and the
    `jax_plugins` entry-point group, as JAX discovers them), without importing them."""
    names = []
    if importlib.util.find_spec("jax_plugins") is not None:
        import jax_plugins  # a namespace package: importing it runs no plugin code

        names += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    names += [ep.name for ep in entry_points(group="jax_plugins")]
    for module in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin"):
        if importlib.util.find_spec(module) is not None:
            names.append(module)
    return names


def non_tpu_platforms() -> str | None:
    """JAX_PLATFORMS value naming every installed non-TPU platform ("cuda,cpu", "cpu", ...), or
    None when a plugin of unknown platform is installed (then we do not guess)."""
    accelerators = []
    for name in _installed_plugin_names():
        platform = next((p for prefix, p in _PLUGIN_PLATFORMS.items() if name.startswith(prefix)),
                        None)
        if platform is None:
            return None
        if platform not in accelerators:
            accelerators.append(platform)
    return ",".join([*accelerators, "cpu"])


def choose_platforms(env: MutableMapping[str, str] | None = None) -> str | None:
    """Set JAX_PLATFORMS to leave TPUs out when libtpu is installed, no TPU is attached and the
    user did not set JAX_PLATFORMS. Returns the value set, or None when nothing was changed."""
    env = os.environ if env is None else env
    if "JAX_PLATFORMS" in env or "JAX_FORCE_TPU_INIT" in env:  # set, even empty: the user chose
        return None
    if importlib.util.find_spec("libtpu") is None or tpu_device_present():
        return None
    platforms = non_tpu_platforms()
    if platforms is None:
        return None
    env["JAX_PLATFORMS"] = platforms
    jax = sys.modules.get("jax")
    if env is os.environ and jax is not None and jax.config.jax_platforms is None:
        # JAX was imported first (e.g. a notebook): it read JAX_PLATFORMS already; backends are
        # created on first use, so updating its config still takes effect before then.
        jax.config.update("jax_platforms", platforms)
    return platforms


def jax_runs_on_cpu_only(env: Mapping[str, str] | None = None) -> bool:
    """True when JAX will compute on the CPU: JAX_PLATFORMS names only "cpu", or it is unset (or
    empty) and neither a TPU chip nor an accelerator plugin is on this machine (without importing
    JAX; call it after `choose_platforms`)."""
    env = os.environ if env is None else env
    named = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if named:  # JAX reads an empty value as unset
        return named == ["cpu"]
    return non_tpu_platforms() == "cpu" and not tpu_device_present()


def cpu_has_amx(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has AMX bf16 tiles (Intel Sapphire Rapids and later): the `amx_bf16` flag
    of /proc/cpuinfo. None where that file cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return "amx_bf16" in flags.split()


def quiet_tensorflow(env: MutableMapping[str, str] | None = None) -> None:
    """TensorFlow (imported by seqio/grain) prints C++ start-up lines unless told not to; an
    explicit TF_CPP_MIN_LOG_LEVEL wins."""
    env = os.environ if env is None else env
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
