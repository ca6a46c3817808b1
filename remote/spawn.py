"""Starting the job's first process (the fork and exec happen in C: see native/)."""

from __future__ import annotations

import os
import socket

from qrun.native import ffi, lib


def spawn(argv: list[str], env: dict[str, str], cwd: str, stdio: tuple[int, int, int],
          seccomp_filter: bytes | None, ptrace_options: int = 0,
          terminal: bool = False) -> tuple[int, int, int]:
    """Fork and exec argv with env in cwd on the given stdin/stdout/stderr. With a filter,
    the calling thread seizes the child (PTRACE_SEIZE with `ptrace_options`: it becomes
    the tracer) before the child installs the filter and execs.

    With `terminal` (stdio is a pty) a small session leader owns the pty and the job runs
    in its own foreground process group under it, as under a login shell.

    Returns (job pid, pid to wait for, fd): the second is the job itself, or with a
    terminal the session leader, which ends with the job's status; the fd tells how the
    job failed to start (see start_failure)."""
    c_args = [ffi.new("char[]", os.fsencode(a)) for a in argv]
    c_env = [ffi.new("char[]", os.fsencode(f"{k}={v}")) for k, v in env.items()]
    search = "/" not in argv[0]
    if search:
        # execvp searches the PATH given to the job, as the home shell would.
        os.environ["PATH"] = env.get("PATH", "/usr/bin:/bin")
    filt = seccomp_filter or b""
    r, w = os.pipe2(os.O_CLOEXEC)
    leader = ffi.new("int *")
    pid = lib.qr_spawn_traced(os.fsencode(argv[0]), ffi.new("char *[]", c_args + [ffi.NULL]),
                              ffi.new("char *[]", c_env + [ffi.NULL]), os.fsencode(cwd),
                              stdio[0], stdio[1], stdio[2], w, filt, len(filt), int(search),
                              ptrace_options if seccomp_filter is not None else 0, int(terminal), leader)
    os.close(w)
    if pid < 0:
        os.close(r)
        raise OSError(-pid, "fork")
    return pid, int(leader[0]), r


def start_failure(fd: int) -> dict[str, object]:
    """How the job failed to start, as exit-report fields ({} if it started): the child
    writes the step that failed and its errno before it exits."""
    try:
        data = os.read(fd, 8)
    except OSError:
        return {}
    finally:
        os.close(fd)
    if len(data) != 8:
        return {}
    step, err = int.from_bytes(data[:4], "little"), int.from_bytes(data[4:], "little")
    why = os.strerror(err)
    if step == lib.QR_STEP_EXEC:
        return {"spawn_errno": err}
    if step in (lib.QR_STEP_PTRACE, lib.QR_STEP_SECCOMP):
        what = "ptrace" if step == lib.QR_STEP_PTRACE else "seccomp filters"
        return {"error": f"the execution host {socket.gethostname()} forbids {what} ({why}): "
                         "transparent jobs cannot run there (a container's seccomp profile or "
                         "kernel.yama.ptrace_scope)", "error_kind": "no_ptrace"}
    if step == lib.QR_STEP_CWD:
        return {"error": f"cannot enter the job's working directory on {socket.gethostname()}: {why}",
                "error_kind": "remote_cwd"}
    return {"error": f"could not start the job: {why}", "error_kind": "launch"}
