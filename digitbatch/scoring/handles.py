"""Worker-side handles on Zarr groups and arrays, opened once per process.

Opening a group reads its metadata and looking an array up in it parses the
array's metadata, for every array of every task otherwise. The handles are
keyed on the group metadata file's identity and mtime (or an object's ETag),
so a group deleted and made again at the same path (a long-lived cluster
scoring into the same output every night) is opened afresh.
"""

from __future__ import annotations

import functools
import os

from .. import storage


def open_group_cached(path: str, mode: str = "r+"):
    """A worker's handle on a group, opened once per process (metadata read once).

    Keyed on the group metadata file's identity and mtime too, so a group
    deleted and made again at the same path (a long-lived cluster scoring
    into the same output every night) is opened afresh.
    """
    p = storage.to_path(path)
    try:
        if storage.is_local(p):
            st = os.stat(p / "zarr.json")
            stamp = (st.st_ino, st.st_mtime_ns)
        else:
            info = p.fs.info((p / "zarr.json").path)
            stamp = tuple(str(info.get(k)) for k in ("ETag", "LastModified", "mtime", "size"))
    except FileNotFoundError:
        stamp = None
    return _open_group(str(p), mode, stamp)


def open_array_cached(path: str, name: str, mode: str = "r+"):
    """A worker's handle on array ``name`` of the group at ``path``, opened once
    per process like :func:`open_group_cached` (a zarr group lookup reads and
    parses the array's metadata, for every array of every task otherwise)."""
    group = open_group_cached(path, mode)
    return _open_array(id(group), name, group)


@functools.lru_cache(maxsize=16)
def _open_group(path: str, mode: str, stamp) -> object:
    return storage.open_group(path, mode=mode)


_ARRAYS: dict[tuple[int, str], tuple] = {}


def _open_array(group_id: int, name: str, group) -> object:
    hit = _ARRAYS.get((group_id, name))
    if hit is not None and hit[0] is group:  # (an id is reused only once its group is gone)
        return hit[1]
    if len(_ARRAYS) > 64:
        _ARRAYS.clear()
    arr = group[name]
    _ARRAYS[(group_id, name)] = (group, arr)
    return arr


def forget_handles() -> None:
    """Drop every cached handle of this process (an output was replaced under them)."""
    _open_group.cache_clear()
    _ARRAYS.clear()
