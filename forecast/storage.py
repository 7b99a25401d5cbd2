"""Temporary files a local Zarr store leaves behind when its writer is killed mid-write.

zarr 3.1.6's `LocalStore` writes every object (a chunk, a shard, a `zarr.json`) whole into a
temporary file beside it and then renames it over the object (`zarr.storage._local._atomic_write`):
the temporary name is `Path(key).with_suffix(f".{uuid4().hex}.partial")`, so chunk `c/0/3/5`
is written as `c/0/3/5.<32 hex digits>.partial` and `zarr.json` as `zarr.<32 hex>.partial`. A
reader therefore never sees a torn object: after a SIGKILL the object is either absent, the old
version, or the new one. But the temporary file is only removed when the write raises an
`Exception`; a SIGKILL (or an OOM kill, a lost node, a KeyboardInterrupt) between the open and
the rename leaves it there, with some or all of the object's bytes, and nothing in zarr ever
removes it. It is listed as a key (`store.list()` yields every file) and leaks its disk.

A rerun rewrites the object under a fresh temporary name, so it must remove the old one itself.
Removing a temporary file is only safe when no live process is writing it: a writer whose file
is unlinked under it fails at its rename. So the functions here remove only what the caller
names, the temporary files of `keys` (objects the caller is about to rewrite and owns) or
everything under the prefixes `under` (subtrees the caller owns, or holds the lock of), and
only files that match zarr's own temporary pattern: a real object is never touched.

Object stores (s3, gcs, memory) write an object in one PUT and leave nothing: for a location
that is not a local path these functions do nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

TEMP_SUFFIX = r"\.[0-9a-f]{32}\.partial"  # what `_atomic_write` appends, after the key's stem
TEMP_NAME = re.compile(rf".+{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of zarr LocalStore's temporary names."""
    return TEMP_NAME.fullmatch(name) is not None


def local_root(location) -> Path | None:
    """The directory of a local store (a path, a file:// URL or a zarr `LocalStore`); None
    for other stores."""
    from zarr.storage import LocalStore

    if isinstance(location, LocalStore):
        return Path(location.root)
    if hasattr(location, "supports_listing"):  # another zarr store: nothing on a local disk
        return None
    text = str(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        return None
    return Path(text)


def temp_files_of_key(root: Path, key: str) -> list[Path]:
    """The temporary files zarr left for the object `key`: in its directory, named
    `<stem of the key's name>.<32 hex>.partial`. With the `/` chunk key separator (Zarr v3's
    default, used by every store of this package) a chunk's name is a number and its pattern
    matches its own temporary files only; a name with a dot in it (`zarr.json`, or keys with
    the `.` separator) shares its stem with the names that differ after its last dot."""
    name = PurePosixPath(key).name
    directory = root / PurePosixPath(key).parent
    pattern = re.compile(re.escape(PurePosixPath(name).stem) + TEMP_SUFFIX)
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Path(e.path) for e in entries if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False)]


def temp_files_under(root: Path, prefix: str = "", exclude: Iterable[str] = ()) -> list[Path]:
    """Every temporary file in the subtree `prefix` ("" is the whole store), skipping the
    subtrees `exclude` (store keys such as "fields/c")."""
    skip = {os.path.normpath(root / p) for p in exclude}
    top = root / prefix if prefix else root
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(dirpath, d)) not in skip]
        found += [Path(dirpath) / f for f in filenames if is_temp_name(f)]
    return found


def find_temp_files(
    location,
    *,
    keys: Iterable[str] = (),
    under: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> list[str]:
    """Store keys (paths relative to the store) of the temporary files of `keys` and of every
    temporary file under the prefixes `under` (minus the subtrees `exclude`), sorted.
    `location`: a store's path, a file:// URL or a zarr store."""
    root = local_root(location)
    if root is None or not root.is_dir():
        return []
    exclude = list(exclude)
    paths: set[Path] = set()
    for key in keys:
        paths.update(temp_files_of_key(root, key))
    for prefix in under:
        paths.update(temp_files_under(root, prefix, exclude))
    return sorted(p.relative_to(root).as_posix() for p in paths)


def remove_temp_files(
    location,
    *,
    keys: Iterable[str] = (),
    under: Iterable[str] = (),
    exclude: Iterable[str] = (),
    what: str = "",
) -> list[str]:
    """Remove the temporary files `find_temp_files` names; returns their store keys and logs
    them. The caller must own what it names: the objects `keys` and the subtrees `under` are
    written by nobody else while this runs (see the module docstring)."""
    removed = []
    root = local_root(location)
    for key in find_temp_files(location, keys=keys, under=under, exclude=exclude):
        try:
            (root / key).unlink()
        except FileNotFoundError:  # removed meanwhile (a rerun of the same cleanup)
            continue
        removed.append(key)
    if removed:
        log.warning(
            "%s: removed %d temporary file(s) left by a killed write%s: %s%s",
            location,
            len(removed),
            f" ({what})" if what else "",
            ", ".join(removed[:5]),
            ", ..." if len(removed) > 5 else "",
        )
    return removed


def remove_init_temp_files(location, init_index: int, skip: Iterable[str] = (), what: str = "") -> list[str]:
    """For a group of arrays along `init_time` with one writer at a time (the scores store; the
    forecast store, written by processes in parallel, has finer rules of its own): remove the
    temporary files of the root's and every array's `zarr.json`, of this init time's part of
    each array whose first dimension is `init_time` (`NAME/c/INIT/...`), of every chunk of the
    other arrays (coordinates: small), and anything in a folder that holds no array (one whose
    creation was killed). The arrays `skip` are left out altogether (their `zarr.json`
    excepted). The caller must be the one writer of all this. Costs a listing of the root and
    of this init time's chunks, not of the store."""
    import warnings

    import zarr

    root = local_root(location)
    if root is None or not root.is_dir():
        return []
    skip = set(skip)
    with warnings.catch_warnings():
        # zarr warns of the very files this removes ("not recognized as a component")
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
        arrays = dict(zarr.open_group(str(root), mode="r").arrays())  # as it is now
    keys, under = ["zarr.json"], []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        name = entry.name
        keys.append(f"{name}/zarr.json")
        if name in skip:
            continue
        if name not in arrays:
            under.append(name)
        elif (arrays[name].metadata.dimension_names or (None,))[0] == "init_time" and arrays[name].ndim > 1:
            under.append(f"{name}/c/{int(init_index)}")
        else:
            under.append(f"{name}/c")
    return remove_temp_files(location, keys=keys, under=under, what=what)
