"""Test machinery: stop a real process at a chosen Zarr write, deterministically.

`install` wraps zarr 3.1.6's `LocalStore` object write (`zarr.storage._local._put`, which every
`LocalStore.set` calls for a chunk, a shard or a `zarr.json`). The `nth` write (from 1) whose
store key matches `pattern` (fnmatch, relative to the store root `store`) is cut short:

* `partial=True`: half of the object's bytes go into zarr's own temporary file (zarr's
  `_atomic_write`, so the name is the one zarr would use), and the rename never comes: the
  state a SIGKILL between zarr's write and its rename leaves;
* `partial=False`: nothing is written for that object;

then the key of that object is written to the file `ready` (if given), and `then="kill"`
SIGKILLs this process at once, or `then="wait"` blocks that write forever (the test kills the
process when it likes, after `ready` appears: the other threads carry on until they wait for
the writer). `record` appends every matching key written to a
file, line by line, so a rerun can show which objects it wrote.

`install_save_file` does the same for the training loop's resumable state (safetensors).
Run as a script it installs a hook and then the real command line, e.g.

    python tests/kill_at_write.py --store S.zarr --key 'fields/c/*' --nth 5 -- run --archive ...
    python tests/kill_at_write.py --save-file 2 -- train --archive ...

Only the write is faked; everything the process does before it is the real code.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import signal
import sys
import threading
from pathlib import Path


def install(
    store: str | os.PathLike,
    pattern: str,
    nth: int | None = None,
    *,
    partial: bool = True,
    then: str = "kill",
    ready: str | os.PathLike | None = None,
    record: str | os.PathLike | None = None,
) -> None:
    from zarr.storage import _local

    if then not in ("kill", "wait") or (then == "wait" and ready is None):
        raise ValueError("then is 'kill' or 'wait' (with a `ready` file)")
    root = Path(store).resolve()
    real_put = _local._put
    lock = threading.Lock()
    seen = [0]

    def put(path: Path, value, exclusive: bool = False) -> int:
        try:
            key = Path(path).resolve().relative_to(root).as_posix()
        except ValueError:  # another store
            return real_put(path, value, exclusive=exclusive)
        if not fnmatch.fnmatchcase(key, pattern):
            return real_put(path, value, exclusive=exclusive)
        with lock:
            seen[0] += 1
            count = seen[0]
        if nth is None or count != nth:
            written = real_put(path, value, exclusive=exclusive)
            if record is not None:
                with lock, open(record, "a") as f:
                    f.write(key + "\n")
            return written
        if partial:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            data = memoryview(value.as_buffer_like()).cast("B")
            with _local._atomic_write(Path(path), "wb") as f:
                f.write(data[: max(1, len(data) // 2)])
                f.flush()
                _stop(then, ready, key)
        _stop(then, ready, key)
        raise AssertionError("unreachable")

    _local._put = put


def install_save_file(nth: int, *, partial: bool = True, then: str = "kill", ready=None) -> None:
    """The same for the training loop's own temporary-then-rename writes: its `nth` call of
    safetensors' `save_file` (forecast.training.loop's resumable state) writes half of the
    file's bytes (or nothing), and the process stops before the loop's rename."""
    from safetensors.torch import save

    from forecast.training import loop

    real = loop.save_file
    seen = [0]

    def save_file(tensors, filename, metadata=None):
        seen[0] += 1
        if seen[0] != nth:
            return real(tensors, filename, metadata=metadata)
        if partial:
            data = save(tensors, metadata=metadata)
            with open(filename, "wb") as f:
                f.write(data[: len(data) // 2])
        _stop(then, ready, str(filename))

    loop.save_file = save_file


def _stop(then: str, ready, key: str) -> None:
    if ready is not None:
        Path(ready).write_text(key)  # which object was cut short
    if then == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Event().wait()  # until killed from outside


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store")
    p.add_argument("--key", help="fnmatch pattern of store keys")
    p.add_argument("--save-file", type=int, help="instead: cut short the training state's Nth save")
    p.add_argument("--nth", type=int, default=None, help="the write to cut short (none: only record)")
    p.add_argument("--no-partial", action="store_true", help="write nothing of it (default: half, no rename)")
    p.add_argument("--then", default="kill", choices=["kill", "wait"])
    p.add_argument("--ready")
    p.add_argument("--record")
    p.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the `forecast` command line")
    args = p.parse_args(argv)
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    partial = not args.no_partial
    if args.save_file:
        install_save_file(args.save_file, partial=partial, then=args.then, ready=args.ready)
    else:
        install(args.store, args.key, args.nth, partial=partial, then=args.then, ready=args.ready, record=args.record)
    from forecast.cli import main as forecast_main

    return forecast_main(cli)


if __name__ == "__main__":
    sys.exit(main())
