"""A cleaning run's output directory: refused when it already holds files (unless overwrite), and
written through a staging directory beside it that replaces it only when the run has succeeded.

So stale shards of an earlier run never sit beside new ones, stats.json always describes exactly
the shards next to it, and a failed run (bad input, a crash) leaves the old output untouched and no
staging directory behind. Local outputs are committed with directory renames (atomic); on object
stores (gs://) there are no directories: the old objects are deleted, then the run's objects are
renamed into place one by one, after the run has succeeded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator

from apache_beam.io.filesystems import FileSystems

from data_pipelines.errors import BadInput

STAGING_MARK = ".partial-"


def is_remote(path: str) -> bool:
    return "://" in path


def _remote_files(prefix: str) -> list[str]:
    return [m.path for m in FileSystems.match([f"{prefix.rstrip('/')}/**"])[0].metadata_list]


def check_output(output: str, overwrite: bool) -> None:
    """Refuses an output that is a file, or a directory holding anything, unless `overwrite`."""
    if is_remote(output):
        existing = _remote_files(output)
    elif os.path.isfile(output):
        raise BadInput(f"--output {output}: is a file; expected a directory")
    else:
        existing = os.listdir(output) if os.path.isdir(output) else []
    if existing and not overwrite:
        raise BadInput(f"--output {output}: not empty ({len(existing)} entries from an earlier "
                          "run?); pass --overwrite to replace it, or choose a new directory")


@contextlib.contextmanager
def staged_output(output: str, overwrite: bool) -> Iterator[str]:
    """Yields a staging directory beside `output` to write the run into. On success it replaces
    `output` (whose old contents are removed: `check_output` made sure that was asked for); on
    any failure it is removed and `output` is left as it was."""
    check_output(output, overwrite)
    output = output.rstrip("/")
    staging = f"{output}{STAGING_MARK}{uuid.uuid4().hex[:12]}"
    try:
        yield staging
    except BaseException:
        _remove(staging)
        raise
    try:
        _commit(staging, output)
    finally:
        _remove(staging)


def _commit(staging: str, output: str) -> None:
    if is_remote(output):
        old = _remote_files(output)
        if old:
            FileSystems.delete(old)
        new = _remote_files(staging)
        FileSystems.rename(new, [output + path[len(staging):] for path in new])
        return
    if not os.path.isdir(staging):  # a run that wrote nothing still leaves an (empty) output
        os.makedirs(staging)
    if os.path.isdir(output):
        retired = f"{output}.replaced-{uuid.uuid4().hex[:12]}"
        os.rename(output, retired)
        os.rename(staging, output)
        shutil.rmtree(retired)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        os.rename(staging, output)


def _remove(staging: str) -> None:
    if is_remote(staging):
        leftover = _remote_files(staging)
        if leftover:
            FileSystems.delete(leftover)
    else:
        shutil.rmtree(staging, ignore_errors=True)
