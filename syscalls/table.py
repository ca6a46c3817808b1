"""The syscall table: one line per syscall, with its x86_64 and aarch64 numbers.

Regular calls are pure data (their argument kinds say how to marshal them); the few that
need code name a handler. The order is: trapped calls grouped by family, then every other
syscall the two architectures know, which runs locally untouched. A number that is in
neither column (a syscall newer than this table) is trapped and refused with ENOSYS.
"""

from __future__ import annotations

from qrun.syscalls.model import (
    Addr,
    Argv,
    BufIn,
    BufOut,
    DirFd,
    Fd,
    Flags,
    Id,
    IdList,
    IdListOut,
    IdOut,
    Int,
    IovIn,
    IovOut,
    Level,
    Path,
    PathOut,
    Pid,
    Route,
    Str,
    StructIn,
    StructOut,
    Syscall,
)

FULL, PARTIAL, LOCAL_LEVEL, DENIED = Level.FULL, Level.PARTIAL, Level.LOCAL, Level.DENIED

# Tags double as the user's selection language (`--trace=%file`), as in strace.
FILE, DESC, PROCESS, SIGNAL, IDENT = (frozenset({t}) for t in ("file", "desc", "process", "signal", "identity"))
MEMORY, NETWORK, IPC, TIME, SYSTEM, CREDS = (frozenset({t}) for t in ("memory", "network", "ipc", "time", "system", "creds"))

INT, ATFLAGS, OFLAGS = Int(), Flags("at"), Flags("open")
FD, DIRFD, PATH, LPATH, STR, PID = Fd(), DirFd(), Path(), Path(follow=False), Str(), Pid()
ADDR, ARGV, ID, IDOUT = Addr(), Argv(), Id(), IdOut()

TABLE: list[Syscall] = []


def A(*kinds: object) -> tuple:  # noqa: N802 - part of the table's notation
    return tuple(kinds)


def P(name: str, x: int | None, a: int | None, args: tuple,  # noqa: N802
      note: str = "", level: Level = FULL, tags: frozenset[str] = FILE, updates: str = "") -> None:
    """Path call: forwarded when its path routes home. `updates`: see Syscall.updates_copies."""
    TABLE.append(Syscall(name, x, a, args, Route.BY_PATH, tags, note=note, level=level,
                         updates_copies=updates))


def F(name: str, x: int | None, a: int | None, args: tuple,  # noqa: N802
      home_as: str = "", note: str = "", level: Level = FULL, tags: frozenset[str] = DESC,
      copy: bool = False, updates: str = "") -> None:
    """Fd call: forwarded when its fd is a home file. `copy`: on a read-only local copy it runs
    locally (the data path); everything else about a copied file is asked of home."""
    TABLE.append(Syscall(name, x, a, args, Route.BY_FD, tags | FILE, home_as=home_as,
                         note=note, level=level, copy_local=copy, local_fd_native=True,
                         updates_copies=updates))


def X(name: str, x: int | None, a: int | None, handler: str, args: tuple,  # noqa: N802
      tags: frozenset[str], errno: str = "", note: str = "",
      level: Level = FULL, local_fd: bool = False, answer: tuple[str, ...] = ()) -> None:
    """Irregular call: handled by the code named `handler`. `local_fd`: on a local fd
    (argument 0) the handler would do nothing, so the call runs without it."""
    TABLE.append(Syscall(name, x, a, args, Route.IRREGULAR, tags, handler=handler,
                         errno=errno, note=note, level=level, local_fd_native=local_fd,
                         answer=answer))


def I(name: str, x: int | None, a: int | None, handler: str, args: tuple = (),  # noqa: N802, E741, E743
      answer: tuple[str, ...] = (), note: str = "") -> None:
    """Identity call: answered from the job's home identity (`answer` names its fields)."""
    TABLE.append(Syscall(name, x, a, args, Route.IDENTITY, IDENT, handler=handler,
                         note=note, answer=answer))


def D(name: str, x: int | None, a: int | None, errno: str, tags: frozenset[str],  # noqa: N802
      note: str = "") -> None:
    """Denied call: fails with `errno` and one warning line."""
    TABLE.append(Syscall(name, x, a, (), Route.DENY, tags, errno=errno, note=note,
                         level=DENIED))


def L(name: str, x: int | None, a: int | None, tags: frozenset[str]) -> None:  # noqa: N802
    """Local call: never trapped."""
    TABLE.append(Syscall(name, x, a, (), Route.LOCAL, tags, level=LOCAL_LEVEL))


# fmt: off
# ---- open family: home files become local copies or placeholders ------------------------
X("open",              2, None, "open", A(PATH, OFLAGS, INT), FILE)
X("openat",          257,   56, "open", A(DIRFD, PATH, OFLAGS, INT), FILE)
X("openat2",         437,  437, "openat2", A(DIRFD, PATH, StructIn("open_how"), INT), FILE, note="executed as openat2 at home, so its checks and RESOLVE_* rules apply there")
X("creat",            85, None, "creat", A(PATH, INT), FILE)
# ---- path calls: forwarded when the path routes home -----------------------------------
P("stat",              4, None, A(PATH, StructOut("stat")))
P("lstat",             6, None, A(LPATH, StructOut("stat")))
P("newfstatat",      262,   79, A(DIRFD, PATH, StructOut("stat"), ATFLAGS))
P("statx",           332,  291, A(DIRFD, PATH, ATFLAGS, INT, StructOut("statx")))
P("access",           21, None, A(PATH, INT))
P("faccessat",       269,   48, A(DIRFD, PATH, INT))
P("faccessat2",      439,  439, A(DIRFD, PATH, INT, ATFLAGS))
P("mkdir",            83, None, A(LPATH, INT))
P("mkdirat",         258,   34, A(DIRFD, LPATH, INT))
P("rmdir",            84, None, A(LPATH,))
P("unlink",           87, None, A(LPATH,))
P("unlinkat",        263,   35, A(DIRFD, LPATH, ATFLAGS))
P("rename",           82, None, A(LPATH, LPATH))
P("renameat",        264,   38, A(DIRFD, LPATH, DIRFD, LPATH))
P("renameat2",       316,  276, A(DIRFD, LPATH, DIRFD, LPATH, Flags("rename")))
P("link",             86, None, A(LPATH, LPATH))
P("linkat",          265,   37, A(DIRFD, LPATH, DIRFD, LPATH, ATFLAGS))
P("symlink",          88, None, A(STR, LPATH))
P("symlinkat",       266,   36, A(STR, DIRFD, LPATH))
P("readlink",         89, None, A(LPATH, PathOut(2), INT))
P("readlinkat",      267,   78, A(DIRFD, LPATH, PathOut(3), INT))
P("chmod",            90, None, A(PATH, INT))
P("fchmodat",        268,   53, A(DIRFD, PATH, INT))
P("fchmodat2",       452,  452, A(DIRFD, PATH, INT, ATFLAGS))
P("chown",            92, None, A(PATH, INT, INT))
P("lchown",           94, None, A(LPATH, INT, INT))
P("fchownat",        260,   54, A(DIRFD, PATH, INT, INT, ATFLAGS))
P("utime",           132, None, A(PATH, StructIn("utimbuf")))
P("utimes",          235, None, A(PATH, StructIn("timeval2")))
P("futimesat",       261, None, A(DIRFD, PATH, StructIn("timeval2")))
P("utimensat",       280,   88, A(DIRFD, Path(null_is_fd=True), StructIn("timespec2"), ATFLAGS), note="a NULL path (futimens) routes by the fd")
P("truncate",         76,   45, A(PATH, INT), updates="truncate")
P("statfs",          137,   43, A(PATH, StructOut("statfs")))
P("mknod",           133, None, A(LPATH, INT, INT))
P("mknodat",         259,   33, A(DIRFD, LPATH, INT, INT))
P("getxattr",        191,    8, A(PATH, STR, BufOut(3), INT))
P("lgetxattr",       192,    9, A(LPATH, STR, BufOut(3), INT))
P("listxattr",       194,   11, A(PATH, BufOut(2), INT))
P("llistxattr",      195,   12, A(LPATH, BufOut(2), INT))
P("setxattr",        188,    5, A(PATH, STR, BufIn(3), INT, INT))
P("lsetxattr",       189,    6, A(LPATH, STR, BufIn(3), INT, INT))
P("removexattr",     197,   14, A(PATH, STR))
P("lremovexattr",    198,   15, A(LPATH, STR))
# ---- cwd and exec: virtual cwd, home binaries run from validated local copies ------------
X("chdir",            80,   49, "chdir", A(PATH,), FILE)
X("fchdir",           81,   50, "fchdir", A(FD,), FILE)
X("getcwd",           79,   17, "getcwd", A(PathOut(1), INT), FILE)
X("execve",           59,  221, "execve", A(PATH, ARGV, ARGV), FILE | PROCESS, note="home binaries run from a local copy; home #! scripts keep their home path as $0")
X("execveat",        322,  281, "execve", A(DIRFD, PATH, ARGV, ARGV, ATFLAGS), FILE | PROCESS)
X("umask",            95,  166, "umask", A(INT,), FILE, note="also applied to files the home node creates")
# ---- fd calls: forwarded when the fd is a home placeholder --------------------------------
F("read",              0,   63, A(FD, BufOut(2), INT), copy=True)
F("write",             1,   64, A(FD, BufIn(2), INT), updates="write")
F("pread64",          17,   67, A(FD, BufOut(2), INT, INT), copy=True)
F("pwrite64",         18,   68, A(FD, BufIn(2), INT, INT), updates="pwrite")
F("readv",            19,   65, A(FD, IovOut(2), INT), home_as="read", copy=True)
F("writev",           20,   66, A(FD, IovIn(2), INT), home_as="write")
F("preadv",          295,   69, A(FD, IovOut(2), INT, INT, INT), home_as="pread64", copy=True)
F("pwritev",         296,   70, A(FD, IovIn(2), INT, INT, INT), home_as="pwrite64")
F("preadv2",         327,  286, A(FD, IovOut(2), INT, INT, INT, INT), home_as="pread64", level=PARTIAL, note="RWF_* flags and offset -1 are not supported on home files", copy=True)
F("pwritev2",        328,  287, A(FD, IovIn(2), INT, INT, INT, INT), home_as="pwrite64", level=PARTIAL, note="RWF_* flags and offset -1 are not supported on home files")
F("lseek",             8,   62, A(FD, INT, INT), copy=True)
F("fstat",             5,   80, A(FD, StructOut("stat")))
F("ftruncate",        77,   46, A(FD, INT), updates="ftruncate")
F("fsync",            74,   82, A(FD,))
F("fdatasync",        75,   83, A(FD,))
F("syncfs",          306,  267, A(FD,))
F("sync_file_range", 277,   84, A(FD, INT, INT, INT))
F("fchmod",           91,   52, A(FD, INT))
F("fchown",           93,   55, A(FD, INT, INT))
F("getdents64",      217,   61, A(FD, BufOut(2), INT))
F("getdents",         78, None, A(FD, BufOut(2), INT))
F("fstatfs",         138,   44, A(FD, StructOut("statfs")))
F("fallocate",       285,   47, A(FD, INT, INT, INT))
F("fadvise64",       221,  223, A(FD, INT, INT, INT), copy=True)
F("readahead",       187,  213, A(FD, INT, INT), copy=True)
F("fgetxattr",       193,   10, A(FD, STR, BufOut(3), INT))
F("flistxattr",      196,   13, A(FD, BufOut(2), INT))
F("fsetxattr",       190,    7, A(FD, STR, BufIn(3), INT, INT))
F("fremovexattr",    199,   16, A(FD, STR))
X("fcntl",            72,   25, "fcntl", A(FD, INT, INT), DESC, level=PARTIAL, note="on home fds: F_GETFL/F_SETFL and record locks are forwarded (F_SETLKW waits in the job, as flock does), fd flags and dups stay local; leases and F_NOTIFY fail with EINVAL", local_fd=True)
X("ioctl",            16,   29, "ioctl", A(FD, INT, INT), DESC, level=PARTIAL, note="on home fds every request fails with ENOTTY (they are files and directories); on a terminal, the process group and session ids of TIOCGPGRP, TIOCSPGRP and TIOCGSID are home pids")
X("close",             3,   57, "close", A(FD,), DESC, local_fd=True)
X("flock",            73,   32, "flock", A(FD, INT), FILE | DESC, local_fd=True, note="on home fds a blocking lock waits in the job (retried at home), so the job's other processes, its stdio and signals go on; a signal interrupts it as natively")
X("close_range",     436,  436, "close_range", A(INT, INT, INT), DESC)
X("copy_file_range", 326,  285, "no_home_fd", A(FD, INT, FD, INT, INT, INT), DESC, errno="EXDEV", note="with a home fd: EXDEV, so callers fall back to read/write")
X("sendfile",         40,   71, "no_home_fd", A(FD, FD, INT, INT), DESC, errno="EINVAL", note="with a home fd: EINVAL, so callers fall back to read/write")
X("splice",          275,   76, "no_home_fd", A(FD, INT, FD, INT, INT, INT), DESC, errno="EINVAL", note="with a home fd: EINVAL")
X("tee",             276,   77, "no_home_fd", A(FD, FD, INT, INT), DESC, errno="EINVAL", note="with a home fd: EINVAL")
# ---- identity: the job's home pids, ids and host name -------------------------------------
I("getpid",           39,  172, "getpid")
I("getppid",         110,  173, "getppid")
I("gettid",          186,  178, "gettid")
I("getuid",          102,  174, "id", answer=("uid",))
I("geteuid",         107,  175, "id", answer=("euid",))
I("getgid",          104,  176, "id", answer=("gid",))
I("getegid",         108,  177, "id", answer=("egid",))
I("getresuid",       118,  148, "put_ids", A(IDOUT, IDOUT, IDOUT), answer=("uid", "euid", "euid"))
I("getresgid",       120,  150, "put_ids", A(IDOUT, IDOUT, IDOUT), answer=("gid", "egid", "egid"))
I("getgroups",       115,  158, "getgroups", A(INT, IdListOut(0)))
I("uname",            63,  160, "uname", A(StructOut("utsname"),))
I("getpgid",         121,  155, "getpgid", A(PID,))
I("getpgrp",         111, None, "getpgid")
I("getsid",          124,  156, "getsid", A(PID,))
I("set_tid_address", 218,   96, "set_tid_address", A(ADDR,))
I("setsid",          112,  157, "setsid")
# ---- processes and signals: followed, and their pids translated ---------------------------
X("fork",             57, None, "fork", A(), PROCESS)
X("vfork",            58, None, "vfork", A(), PROCESS)
X("clone",            56,  220, "clone", A(Flags("clone"), ADDR, ADDR, ADDR, ADDR), PROCESS)
X("clone3",          435,  435, "clone3", A(StructIn("clone_args"), INT), PROCESS)
X("wait4",            61,  260, "wait4", A(PID, ADDR, INT, ADDR), PROCESS, level=PARTIAL, note="rusage is the execution host's")
X("waitid",          247,   95, "waitid", A(INT, PID, StructOut("siginfo"), INT, ADDR), PROCESS)
X("kill",             62,  129, "kill", A(PID, INT), SIGNAL, note="a home pid outside the job is signalled at home")
X("tkill",           200,  130, "pids", A(PID, INT), SIGNAL)
X("tgkill",          234,  131, "pids", A(PID, PID, INT), SIGNAL)
X("rt_sigqueueinfo", 129,  138, "pids", A(PID, INT, StructIn("siginfo")), SIGNAL, errno="EPERM", level=PARTIAL, note="only job processes")
X("rt_tgsigqueueinfo", 297, 240, "pids", A(PID, PID, INT, StructIn("siginfo")), SIGNAL, level=PARTIAL, note="only job processes")
X("pidfd_open",      434,  434, "pids", A(PID, INT), PROCESS | SIGNAL, level=PARTIAL, note="only job processes")
X("setpgid",         109,  154, "pids", A(PID, PID), PROCESS)
# ---- refused: would escape the home view or cannot be honoured remotely --------------------
D("chroot",          161,   51, "EPERM", FILE, "the job's root is the home node's")
D("mount",           165,   40, "EPERM", FILE)
D("umount2",         166,   39, "EPERM", FILE)
D("pivot_root",      155,   41, "EPERM", FILE)
D("swapon",          167,  224, "EPERM", FILE)
D("swapoff",         168,  225, "EPERM", FILE)
D("acct",            163,   89, "EPERM", FILE)
D("quotactl",        179,   60, "EPERM", FILE)
D("uselib",          134, None, "ENOSYS", FILE)
D("name_to_handle_at", 303, 264, "EOPNOTSUPP", FILE, "file handles cannot name home files")
D("open_by_handle_at", 304, 265, "EPERM", FILE, "file handles cannot name home files")
D("inotify_add_watch", 254,  27, "ENOSYS", FILE, "change notification is not forwarded; tail -f and friends fall back to polling")
D("fanotify_mark",   301,  263, "ENOSYS", FILE, "change notification is not forwarded")
D("io_uring_setup",  425,  425, "ENOSYS", DESC, "io_uring would bypass syscall forwarding")
D("io_uring_enter",  426,  426, "ENOSYS", DESC, "io_uring would bypass syscall forwarding")
D("io_uring_register", 427, 427, "ENOSYS", DESC, "io_uring would bypass syscall forwarding")
D("ptrace",          101,  117, "EPERM", PROCESS, "job processes are already traced by the stub")
D("unshare",         272,   97, "EPERM", PROCESS, "new namespaces would leave the job's home view")
D("setns",           308,  268, "EPERM", PROCESS, "new namespaces would leave the job's home view")
D("sethostname",     170,  161, "EPERM", SYSTEM, "the job's host name is the home node's")
D("setdomainname",   171,  162, "EPERM", SYSTEM, "the job's host name is the home node's")
X("setuid",          105,  146, "setid", A(ID,), CREDS, answer=("uid", "euid"), note="succeeds only when it keeps the job's home ids; otherwise EPERM")
X("setgid",          106,  144, "setid", A(ID,), CREDS, answer=("gid", "egid"), note="succeeds only when it keeps the job's home ids; otherwise EPERM")
X("setreuid",        113,  145, "setid", A(ID, ID), CREDS, answer=("uid", "euid"), note="succeeds only when it keeps the job's home ids; otherwise EPERM")
X("setregid",        114,  143, "setid", A(ID, ID), CREDS, answer=("gid", "egid"), note="succeeds only when it keeps the job's home ids; otherwise EPERM")
X("setresuid",       117,  147, "setid", A(ID, ID, ID), CREDS, answer=("uid", "euid"), note="succeeds only when it keeps the job's home ids; otherwise EPERM")
X("setresgid",       119,  149, "setid", A(ID, ID, ID), CREDS, answer=("gid", "egid"), note="succeeds only when it keeps the job's home ids; otherwise EPERM")
X("setgroups",       116,  159, "setgroups", A(INT, IdList(0)), CREDS, note="succeeds only when it keeps the job's home ids; otherwise EPERM")
X("setfsuid",        122,  151, "setfsid", A(ID,), CREDS, answer=("euid",), note="succeeds only when it keeps the job's home ids; otherwise EPERM")
X("setfsgid",        123,  152, "setfsid", A(ID,), CREDS, answer=("egid",), note="succeeds only when it keeps the job's home ids; otherwise EPERM")
D("reboot",          169,  142, "EPERM", SYSTEM)
D("kexec_load",      246,  104, "EPERM", SYSTEM)
D("init_module",     175,  105, "EPERM", SYSTEM)
D("finit_module",    313,  273, "EPERM", SYSTEM)
D("delete_module",   176,  106, "EPERM", SYSTEM)
# ---- everything else runs locally, untrapped -------------------------------------------
L("poll",                 7, None, DESC)
L("mmap",                 9,  222, MEMORY)
L("mprotect",            10,  226, MEMORY)
L("munmap",              11,  215, MEMORY)
L("brk",                 12,  214, MEMORY)
L("rt_sigaction",        13,  134, SIGNAL)
L("rt_sigprocmask",      14,  135, SIGNAL)
L("rt_sigreturn",        15,  139, SIGNAL)
L("pipe",                22, None, IPC)
L("select",              23, None, DESC)
L("sched_yield",         24,  124, PROCESS)
L("mremap",              25,  216, MEMORY)
L("msync",               26,  227, MEMORY)
L("mincore",             27,  232, MEMORY)
L("madvise",             28,  233, MEMORY)
L("shmget",              29,  194, IPC)
L("shmat",               30,  196, IPC)
L("shmctl",              31,  195, IPC)
L("dup",                 32,   23, DESC)
L("dup2",                33, None, DESC)
L("pause",               34, None, SIGNAL)
L("nanosleep",           35,  101, TIME)
L("getitimer",           36,  102, SYSTEM)
L("alarm",               37, None, SIGNAL)
L("setitimer",           38,  103, SYSTEM)
L("socket",              41,  198, NETWORK)
L("connect",             42,  203, NETWORK)
L("accept",              43,  202, NETWORK)
L("sendto",              44,  206, NETWORK)
L("recvfrom",            45,  207, NETWORK)
L("sendmsg",             46,  211, NETWORK)
L("recvmsg",             47,  212, NETWORK)
L("shutdown",            48,  210, NETWORK)
L("bind",                49,  200, NETWORK)
L("listen",              50,  201, NETWORK)
L("getsockname",         51,  204, NETWORK)
L("getpeername",         52,  205, NETWORK)
L("socketpair",          53,  199, NETWORK)
L("setsockopt",          54,  208, NETWORK)
L("getsockopt",          55,  209, NETWORK)
L("exit",                60,   93, PROCESS)
L("semget",              64,  190, IPC)
L("semop",               65,  193, IPC)
L("semctl",              66,  191, IPC)
L("shmdt",               67,  197, IPC)
L("msgget",              68,  186, IPC)
L("msgsnd",              69,  189, IPC)
L("msgrcv",              70,  188, IPC)
L("msgctl",              71,  187, IPC)
L("gettimeofday",        96,  169, TIME)
L("getrlimit",           97,  163, PROCESS)
L("getrusage",           98,  165, PROCESS)
L("sysinfo",             99,  179, SYSTEM)
L("times",              100,  153, TIME)
L("syslog",             103,  116, SYSTEM)
L("capget",             125,   90, PROCESS)
L("capset",             126,   91, SYSTEM)
L("rt_sigpending",      127,  136, SIGNAL)
L("rt_sigtimedwait",    128,  137, SIGNAL)
L("rt_sigsuspend",      130,  133, SIGNAL)
L("sigaltstack",        131,  132, SIGNAL)
L("personality",        135,   92, PROCESS)
L("ustat",              136, None, SYSTEM)
L("sysfs",              139, None, SYSTEM)
L("getpriority",        140,  141, PROCESS)
L("setpriority",        141,  140, PROCESS)
L("sched_setparam",     142,  118, PROCESS)
L("sched_getparam",     143,  121, PROCESS)
L("sched_setscheduler",  144,  119, PROCESS)
L("sched_getscheduler",  145,  120, PROCESS)
L("sched_get_priority_max",  146,  125, PROCESS)
L("sched_get_priority_min",  147,  126, PROCESS)
L("sched_rr_get_interval",  148,  127, PROCESS)
L("mlock",              149,  228, MEMORY)
L("munlock",            150,  229, MEMORY)
L("mlockall",           151,  230, MEMORY)
L("munlockall",         152,  231, MEMORY)
L("vhangup",            153,   58, PROCESS)
L("modify_ldt",         154, None, PROCESS)
L("_sysctl",            156, None, SYSTEM)
L("prctl",              157,  167, PROCESS)
L("arch_prctl",         158, None, PROCESS)
L("adjtimex",           159,  171, TIME)
L("setrlimit",          160,  164, PROCESS)
L("sync",               162,   81, SYSTEM)
L("settimeofday",       164,  170, TIME)
L("iopl",               172, None, PROCESS)
L("ioperm",             173, None, PROCESS)
L("create_module",      174, None, SYSTEM)
L("get_kernel_syms",    177, None, SYSTEM)
L("query_module",       178, None, SYSTEM)
L("nfsservctl",         180,   42, SYSTEM)
L("getpmsg",            181, None, SYSTEM)
L("putpmsg",            182, None, SYSTEM)
L("afs_syscall",        183, None, SYSTEM)
L("tuxcall",            184, None, SYSTEM)
L("security",           185, None, SYSTEM)
L("time",               201, None, TIME)
L("futex",              202,   98, IPC)
L("sched_setaffinity",  203,  122, PROCESS)
L("sched_getaffinity",  204,  123, PROCESS)
L("set_thread_area",    205, None, PROCESS)
L("io_setup",           206,    0, DESC)
L("io_destroy",         207,    1, DESC)
L("io_getevents",       208,    4, DESC)
L("io_submit",          209,    2, DESC)
L("io_cancel",          210,    3, DESC)
L("get_thread_area",    211, None, PROCESS)
L("lookup_dcookie",     212,   18, DESC)
L("epoll_create",       213, None, DESC)
L("epoll_ctl_old",      214, None, DESC)
L("epoll_wait_old",     215, None, DESC)
L("remap_file_pages",   216,  234, MEMORY)
L("restart_syscall",    219,  128, PROCESS)
L("semtimedop",         220,  192, IPC)
L("timer_create",       222,  107, TIME)
L("timer_settime",      223,  110, TIME)
L("timer_gettime",      224,  108, TIME)
L("timer_getoverrun",   225,  109, TIME)
L("timer_delete",       226,  111, TIME)
L("clock_settime",      227,  112, TIME)
L("clock_gettime",      228,  113, TIME)
L("clock_getres",       229,  114, TIME)
L("clock_nanosleep",    230,  115, TIME)
L("exit_group",         231,   94, PROCESS)
L("epoll_wait",         232, None, DESC)
L("epoll_ctl",          233,   21, DESC)
L("vserver",            236, None, SYSTEM)
L("mbind",              237,  235, MEMORY)
L("set_mempolicy",      238,  237, MEMORY)
L("get_mempolicy",      239,  236, MEMORY)
L("mq_open",            240,  180, IPC)
L("mq_unlink",          241,  181, IPC)
L("mq_timedsend",       242,  182, IPC)
L("mq_timedreceive",    243,  183, IPC)
L("mq_notify",          244,  184, IPC)
L("mq_getsetattr",      245,  185, IPC)
L("add_key",            248,  217, SYSTEM)
L("request_key",        249,  218, SYSTEM)
L("keyctl",             250,  219, SYSTEM)
L("ioprio_set",         251,   30, PROCESS)
L("ioprio_get",         252,   31, PROCESS)
L("inotify_init",       253, None, DESC)
L("inotify_rm_watch",   255,   28, DESC)
L("migrate_pages",      256,  238, MEMORY)
L("pselect6",           270,   72, DESC)
L("ppoll",              271,   73, DESC)
L("set_robust_list",    273,   99, IPC)
L("get_robust_list",    274,  100, IPC)
L("vmsplice",           278,   75, DESC)
L("move_pages",         279,  239, MEMORY)
L("epoll_pwait",        281,   22, DESC)
L("signalfd",           282, None, SIGNAL)
L("timerfd_create",     283,   85, TIME)
L("eventfd",            284, None, IPC)
L("timerfd_settime",    286,   86, TIME)
L("timerfd_gettime",    287,   87, TIME)
L("accept4",            288,  242, NETWORK)
L("signalfd4",          289,   74, SIGNAL)
L("eventfd2",           290,   19, IPC)
L("epoll_create1",      291,   20, DESC)
L("dup3",               292,   24, DESC)
L("pipe2",              293,   59, IPC)
L("inotify_init1",      294,   26, DESC)
L("perf_event_open",    298,  241, SYSTEM)
L("recvmmsg",           299,  243, NETWORK)
L("fanotify_init",      300,  262, DESC)
L("prlimit64",          302,  261, PROCESS)
L("clock_adjtime",      305,  266, TIME)
L("sendmmsg",           307,  269, NETWORK)
L("getcpu",             309,  168, PROCESS)
L("process_vm_readv",   310,  270, PROCESS)
L("process_vm_writev",  311,  271, PROCESS)
L("kcmp",               312,  272, PROCESS)
L("sched_setattr",      314,  274, PROCESS)
L("sched_getattr",      315,  275, PROCESS)
L("seccomp",            317,  277, PROCESS)
L("getrandom",          318,  278, SYSTEM)
L("memfd_create",       319,  279, MEMORY)
L("kexec_file_load",    320,  294, SYSTEM)
L("bpf",                321,  280, SYSTEM)
L("userfaultfd",        323,  282, MEMORY)
L("membarrier",         324,  283, MEMORY)
L("mlock2",             325,  284, MEMORY)
L("pkey_mprotect",      329,  288, MEMORY)
L("pkey_alloc",         330,  289, MEMORY)
L("pkey_free",          331,  290, MEMORY)
L("io_pgetevents",      333,  292, DESC)
L("rseq",               334,  293, PROCESS)
L("pidfd_send_signal",  424,  424, SIGNAL)
D("open_tree",          428,  428, "EPERM", FILE, "the mount API would leave the job home view")
D("move_mount",         429,  429, "EPERM", FILE, "the mount API would leave the job home view")
D("fsopen",             430,  430, "EPERM", FILE, "the mount API would leave the job home view")
D("fsconfig",           431,  431, "EPERM", FILE, "the mount API would leave the job home view")
D("fsmount",            432,  432, "EPERM", FILE, "the mount API would leave the job home view")
D("fspick",             433,  433, "EPERM", FILE, "the mount API would leave the job home view")
L("pidfd_getfd",        438,  438, PROCESS)
L("process_madvise",    440,  440, MEMORY)
L("epoll_pwait2",       441,  441, DESC)
D("mount_setattr",      442,  442, "EPERM", FILE, "the mount API would leave the job home view")
L("quotactl_fd",        443,  443, DESC)
L("landlock_create_ruleset",  444,  444, DESC)
L("landlock_add_rule",  445,  445, DESC)
L("landlock_restrict_self",  446,  446, DESC)
L("memfd_secret",       447,  447, MEMORY)
L("process_mrelease",   448,  448, MEMORY)
L("futex_waitv",        449,  449, IPC)
L("set_mempolicy_home_node",  450,  450, MEMORY)
# fmt: on


BY_NAME: dict[str, Syscall] = {s.name: s for s in TABLE}


def by_number(arch: str) -> dict[int, Syscall]:
    return {n: s for s in TABLE if (n := s.number(arch)) is not None}
