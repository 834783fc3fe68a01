"""Files l4opt writes and reads: safe atomic writes inside a run directory, content keys, file
hashes.

Every file l4opt writes under a run directory goes through `safe_write` (bytes in hand) or
`safe_output` (a library writes the file: onnx.save, np.savez): the data lands in a temporary
file in the target's own directory, is fsynced and renamed over the target, so a reader never
sees half a file and a kill leaves the old file or the new one. Before anything is written, the
target and every directory between the run directory (`root`) and it are checked: a symlink, or
a path that leaves `root`, is refused with a BadInput naming it. The walk opens each directory
relative to the one before it without following links (O_NOFOLLOW), so a link swapped in
between the check and the write is refused too. A disk-full or permission error becomes a
BadInput naming the file and what was being written, and the partial temporary file is removed.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import threading
from pathlib import Path

from l4opt.errors import BadInput

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


def content_key(*parts) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def atomic_write(path, data: bytes) -> None:
    """Write a file so that a reader never sees it half-written: a temporary file beside
    `path` (one per process and thread), fsync, then rename over it. Outside a run directory
    (a user's output path); inside one use safe_write."""
    path = Path(path)
    tmp = path.with_name(_tmp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------ inside a run directory

def _host() -> str:
    """This host's name as one dot- and dash-free token (temporary names and work dirs)."""
    import socket

    return "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"


def _tmp_name(name: str) -> str:
    """A hidden temporary name beside `name`, one per host, process and thread, keeping the
    suffix (np.savez appends .npz to a name without it)."""
    suffix = Path(name).suffix
    return f".{name}.{_host()}.{os.getpid()}.{threading.get_ident()}.tmp{suffix}"


_TMP_RE = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)\.(?P<pid>\d+)\.\d+\.tmp(\.[^.]*)?$")


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that pid exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def sweep_stale_tmp(directory) -> list[str]:
    """Remove the temporary files a killed writer of THIS host left in `directory` (its pid
    is gone); another host's, or a live writer's, are left alone. Returns the names removed."""
    gone = []
    host = _host()
    try:
        names = os.listdir(directory)
    except OSError:
        return gone
    for n in names:
        m = _TMP_RE.match(n)
        if m and m["host"] == host and not pid_alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                p = Path(directory) / n
                if p.is_file() and not p.is_symlink():
                    p.unlink()
                    gone.append(n)
    return gone


def _parts(path, root) -> tuple[Path, list[str]]:
    """(the real root, the names from it down to path); refuses a path outside root."""
    if "\0" in str(path):
        raise BadInput(f"refusing {str(path)!r}: a file name cannot hold a NUL character")
    root_real = Path(os.path.realpath(root))
    p = Path(os.path.abspath(path))
    for base in (Path(os.path.abspath(root)), root_real):
        try:
            rel = p.relative_to(base)
        except ValueError:
            continue
        if rel.parts and not any(x in ("", ".", "..") for x in rel.parts):
            return root_real, list(rel.parts)
    raise BadInput(f"refusing {path}: it is not inside the run directory {root}")


def _walk(path, root, names: list[str], create: bool) -> int:
    """An fd of root/names..., each directory opened relative to the one before without
    following links (made when `create`). The caller closes the fd."""
    root_real = Path(os.path.realpath(root))
    try:
        fd = os.open(root_real, _DIR_FLAGS)
    except OSError as exc:
        raise os_error(exc, root, "the run directory") from exc
    walked = root_real
    try:
        for name in names:
            walked = walked / name
            if create:
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise os_error(exc, walked, "a directory") from exc
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(path, walked, fd, name, exc) from exc
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_dirs(path, root, create: bool) -> tuple[int, str]:
    """An fd of the directory holding `path` (walked from root without following links,
    created when `create`), and path's last name, which must not be a symlink."""
    root_real, names = _parts(path, root)
    fd = _walk(path, root, names[:-1], create)
    last = names[-1]
    try:
        st = os.stat(last, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        os.close(fd)
        raise os_error(exc, path, "a file") from exc
    except BaseException:
        os.close(fd)
        raise
    if st is not None and stat.S_ISLNK(st.st_mode):
        os.close(fd)
        raise BadInput(f"refusing to write {path}: {root_real.joinpath(*names)} is a symlink "
                       f"(l4opt never writes through a link; remove it)")
    return fd, last


def _refusal(path, walked: Path, fd: int, name: str, exc: OSError) -> Exception:
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return BadInput(f"refusing to write {path}: its directory {walked} is a symlink (l4opt "
                        f"never writes through a link; remove it)")
    if st is not None and not stat.S_ISDIR(st.st_mode):
        return BadInput(f"refusing to write {path}: {walked} is not a directory")
    return os_error(exc, walked, "a directory")


def os_error(exc: OSError, path, what: str) -> BadInput:
    """An OSError while writing `what` to `path`, as a BadInput that names both."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        why = "no space left on the device (free some space, or choose another run directory)"
    elif exc.errno == errno.EFBIG:
        why = ("the file is larger than this process may write (its file-size limit, "
               "`ulimit -f`, or the filesystem's largest file)")
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = f"permission denied ({exc.strerror}); choose a writable run directory"
    else:
        why = exc.strerror or str(exc)
    return BadInput(f"cannot write {what} to {path}: {why}")


def safe_mkdir(path, root) -> Path:
    """Make directory `path` (and the ones between root and it) inside root, refusing a
    symlink anywhere on the way; returns path."""
    os.close(_walk(path, root, _parts(path, root)[1], create=True))
    return Path(path)


def check_inside(path, root) -> Path:
    """Refuse (BadInput) a path outside root or one with a symlink anywhere below root, the
    last name included; nothing is created."""
    root_real, names = _parts(path, root)
    walked = root_real
    for name in names:
        walked = walked / name
        if walked.is_symlink():
            raise BadInput(f"refusing {path}: {walked} is a symlink (l4opt never reads or "
                           f"writes through a link inside a run directory)")
    return Path(path)


def safe_write(path, data: bytes | str, root, what: str = "a file") -> Path:
    """Write `data` to `path` inside the run directory `root` atomically (temporary file in
    the same directory, fsync, rename); a symlinked target or parent, or a path outside root,
    is refused before anything is written. `what` names the content in errors."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, last = _open_dirs(path, root, create=True)
    tmp = _tmp_name(last)
    try:
        try:
            f = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                        0o666, dir_fd=fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(f, view):]
                os.fsync(f)
            finally:
                os.close(f)
            os.replace(tmp, last, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise os_error(exc, path, what) from exc
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
    return Path(path)


@contextlib.contextmanager
def safe_output(path, root, what: str = "a file"):
    """For a file a library writes by name (onnx.save, np.savez, torch.onnx.export): yields a
    temporary path in the target's directory; on a clean exit it is fsynced and renamed over
    `path`, on an error removed (an OSError becomes a BadInput naming path and `what`). The
    same refusals as safe_write, checked before the library writes and again at the rename.

        with safe_output(d / "model.onnx", run_dir, "the ONNX export") as tmp:
            onnx.save(model, str(tmp))
    """
    fd, last = _open_dirs(path, root, create=True)
    os.close(fd)
    tmp = Path(path).with_name(_tmp_name(last))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        fd, last = _open_dirs(path, root, create=False)
        try:
            os.replace(tmp.name, last, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise os_error(exc, path, what) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def safe_append_fd(path, root) -> int:
    """A file descriptor open for appending to `path` inside root (a log), made if absent;
    refused like safe_write when it or a parent is a symlink. The caller closes it
    (os.fdopen(fd, "ab") or os.dup2 onto 1/2)."""
    fd, last = _open_dirs(path, root, create=True)
    try:
        return os.open(last, os.O_WRONLY | os.O_APPEND | os.O_CREAT |
                       getattr(os, "O_NOFOLLOW", 0), 0o666, dir_fd=fd)
    except OSError as exc:
        raise os_error(exc, path, "a log") from exc
    finally:
        os.close(fd)
