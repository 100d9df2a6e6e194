"""The one way asl writes a file others read: into a temporary file beside it, then renamed
over it. A reader sees the old file or the new one, never half of one; a full disk or a kill
leaves the old file and no temporary behind."""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


@contextlib.contextmanager
def replacing(path: str | os.PathLike):
    """Yields a temporary path beside `path` (same suffix) to write; on leaving the block it
    replaces `path`, or is removed if the block failed."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def user_mode(mode: int = 0o666) -> int:
    """`mode` as the user's umask leaves it (some writers create 0600: our files follow the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """`path` holds `text` whole (UTF-8), or keeps what it held."""
    with replacing(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, user_mode())  # mkstemp creates 0600
