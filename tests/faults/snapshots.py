"""Helpers of the fault suites: what a folder holds, before and after a refused run."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (links not followed), relative, with a digest of
    each file's bytes ("dir" for folders, "link" for links)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = os.path.relpath(p, root)
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_unchanged(before: dict[str, str], root: Path, *allowed_new: str) -> None:
    """Nothing under ``root`` was removed or changed, and nothing appeared but
    paths under ``allowed_new``."""
    after = tree(root)
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    new = sorted(k for k in set(after) - set(before)
                 if not any(k == a or k.startswith(a + os.sep) for a in allowed_new))
    assert not removed, f"removed: {removed[:5]}"
    assert not changed, f"changed: {changed[:5]}"
    assert not new, f"left behind: {new[:5]}"
