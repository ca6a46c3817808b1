"""Starting the job's first process (the fork and exec happen in C: see native/)."""

from __future__ import annotations

import os

from qrun.native import ffi, lib


def spawn(argv: list[str], env: dict[str, str], cwd: str, stdio: tuple[int, int, int],
          seccomp_filter: bytes | None) -> tuple[int, int]:
    """Fork and exec argv with env in cwd on the given stdin/stdout/stderr. With a filter,
    the child stops for the tracer (PTRACE_TRACEME) and installs it before exec.

    Returns (pid, fd): the fd yields the errno of a failed exec (4 bytes), or EOF."""
    c_args = [ffi.new("char[]", os.fsencode(a)) for a in argv]
    c_env = [ffi.new("char[]", os.fsencode(f"{k}={v}")) for k, v in env.items()]
    search = "/" not in argv[0]
    if search:
        # execvp searches the PATH given to the job, as the home shell would.
        os.environ["PATH"] = env.get("PATH", "/usr/bin:/bin")
    filt = seccomp_filter or b""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = lib.qr_spawn_traced(os.fsencode(argv[0]), ffi.new("char *[]", c_args + [ffi.NULL]),
                              ffi.new("char *[]", c_env + [ffi.NULL]), os.fsencode(cwd),
                              stdio[0], stdio[1], stdio[2], w, filt, len(filt), int(search),
                              int(seccomp_filter is not None))
    os.close(w)
    if pid < 0:
        os.close(r)
        raise OSError(-pid, "fork")
    return pid, r


def exec_error(fd: int) -> int:
    """The errno the job's exec failed with, or 0 if it started."""
    try:
        data = os.read(fd, 4)
    except OSError:
        return 0
    finally:
        os.close(fd)
    return int.from_bytes(data, "little") if len(data) == 4 else 0
