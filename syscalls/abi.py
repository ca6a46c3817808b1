"""Linux ABI constants the handlers and the home node name, written once.

They are the same on x86_64 and aarch64 (open(2) flags that differ are converted by
`syscalls.flags`); struct layouts are in `syscalls.structs`, syscall numbers in the table.
"""

import os

# This machine's architecture, as the table names it (the one place that asks).
_MACHINE = os.uname().machine
ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(_MACHINE, _MACHINE)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000

O_ACCMODE, O_WRONLY = 0o3, 0o1
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0o100, 0o200, 0o1000, 0o2000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
FS_IOC_GETFLAGS, FS_CASEFOLD_FL = 0x80086601, 0x40000000   # (the same on x86_64 and aarch64)
O_TMPFILE_BIT = 0o20000000   # __O_TMPFILE: O_TMPFILE without O_DIRECTORY, whose value differs by architecture

F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL = 0, 1, 2, 3, 4
F_GETLK, F_SETLK, F_SETLKW = 5, 6, 7
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
F_DUPFD_CLOEXEC = 1030
F_UNLCK = 2       # struct flock's l_type
LOCK_UN, LOCK_NB = 8, 4

WNOWAIT = 0x01000000
P_PID, P_PGID = 1, 2

CLONE_VM, CLONE_FS, CLONE_FILES = 0x100, 0x200, 0x400
CLONE_VFORK, CLONE_THREAD = 0x4000, 0x10000

TIOCGPGRP, TIOCSPGRP, TIOCGSID = 0x540F, 0x5410, 0x5429

ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
