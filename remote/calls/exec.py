"""execve and execveat: a home program runs from a validated local copy; a home #! script
runs its interpreter with the script's home path as $0."""

from __future__ import annotations

import errno
import os

from qrun.remote.calls.open import open_home
from qrun.remote.channel import GoLocal
from qrun.remote.forwarding import run_local
from qrun.remote.job import Job
from qrun.remote.resolver import dirfd_of, path_index
from qrun.remote.stop import Stop
from qrun.remote.tracee import Scratch
from qrun.syscalls.abi import AT_EMPTY_PATH
from qrun.syscalls.model import Argv, Flags


def h_execve(s: Stop, job: Job) -> None:
    pi = path_index(s.sc)
    argv_i, env_i = (i for i, k in enumerate(s.sc.args) if isinstance(k, Argv))
    at = next((s.arg(i) for i, k in enumerate(s.sc.args) if isinstance(k, Flags) and k.family == "at"), 0)
    tg = job.paths.resolve(s, dirfd_of(s, pi), s.arg(pi), bool(at & AT_EMPTY_PATH))
    s.t.proc.next_exe = None
    if not tg.home:
        run_local(s, [(pi, tg)])
        return
    as_given = s.cstr(s.arg(pi))
    local = open_home(s, job, tg, 0, 0, exec_=True)
    if local is None:
        return  # the error was set by open_home
    with open(local, "rb") as f:
        head = f.read(256)
    scratch = s.scratch()
    if head.startswith(b"#!"):
        _script(s, job, scratch, head, as_given, argv_i, env_i)
        return
    exe_p = scratch.put_str(os.fsencode(local))
    scratch.commit()
    s.rewrite(s.number_of("execve"), [exe_p, s.arg(argv_i), s.arg(env_i), 0, 0, 0])


def _script(s: Stop, job: Job, scratch: Scratch, head: bytes, as_given: bytes,
            argv_i: int, env_i: int) -> None:
    line = head[2:].split(b"\n", 1)[0].strip()
    if not line:
        s.skip(-errno.ENOEXEC)
        return
    parts = line.split(None, 1)
    interp = parts[0]
    argv = s.ptr_array(s.arg(argv_i))
    # The interpreter gets the script's home path, so $0 / __file__ are home paths.
    new_argv = [scratch.put_str(interp)]
    if len(parts) > 1:
        new_argv.append(scratch.put_str(parts[1]))
    new_argv.append(scratch.put_str(as_given))
    new_argv += argv[1:]
    interp_tg = job.paths.resolve_abs(s.t, os.fsdecode(interp))
    exe = interp
    s.t.proc.next_exe = None  # /proc/self/exe is the interpreter
    if interp_tg.home:
        try:
            got = open_home(s, job, interp_tg, 0, 0, exec_=True)
        except GoLocal as g:
            got = g.path  # a home link to the execution host's interpreter
        if got is None:
            return
        exe = os.fsencode(got)
    argv_p = scratch.put_ptrs(new_argv)
    exe_p = scratch.put_str(exe)
    scratch.commit()
    s.rewrite(s.number_of("execve"), [exe_p, argv_p, s.arg(env_i), 0, 0, 0])
