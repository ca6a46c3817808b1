"""qrun's own exit statuses. A job's status passes through unchanged (128+N for signal N),
so qrun's failures use values a job rarely returns, as env(1) and docker do."""

USAGE = 2            # bad command line, environment variable or cluster file
NO_PTRACE = 117      # the execution host forbids ptrace or seccomp filters: no transparent job there
UNREACHABLE = 118    # the execution host cannot be reached (no route, refused connection)
REFUSED = 119        # the execution host refused us (ssh authentication, access rules)
SCHEDULER = 120      # the batch system (Slurm) is down or refused the job
NO_HOST = 121        # no host fits: an unknown host name, the host list matched nothing, all silent,
                     # full or failing --require
REMOTE_CWD = 122     # plain execution: the working directory does not exist on the execution host
PROTOCOL = 123       # stub and home node disagree on protocol or syscall table
LOST = 124           # contact with the execution host was lost mid-job, past its lease; the job was killed
LAUNCH = 125         # the job could not be started: launcher or sandbox failure
NOT_EXECUTABLE = 126
NOT_FOUND = 127

DOC = {
    NO_PTRACE: "the execution host forbids ptrace or seccomp filters, so transparent jobs cannot "
               "run there (a container's seccomp profile, kernel.yama.ptrace_scope)",
    USAGE: "bad command line (missing command, unknown option, bad value), bad environment variable "
           "($QRUN_TIMEOUT, ...) or bad cluster file; the current directory is not accessible",
    UNREACHABLE: "the execution host could not be reached",
    REFUSED: "the execution host refused the connection (e.g. ssh authentication)",
    SCHEDULER: "the batch system (Slurm) is down or refused the job",
    NO_HOST: "no host fits (unknown host name, empty host list, all agents silent, all full, "
             "or --require unmet)",
    REMOTE_CWD: "plain execution: the working directory does not exist on the execution host",
    PROTOCOL: "the stub and the home node run different protocol or syscall-table versions",
    LOST: "contact with the execution host was lost while the job ran, for longer than its lease; "
          "the job was killed",
    LAUNCH: "the job could not be started (launcher failed, sandbox unavailable)",
    NOT_EXECUTABLE: "the command was found but could not be executed",
    NOT_FOUND: "the command was not found",
}


# What the stub reports as the reason a job could not start -> qrun's exit status.
BY_KIND = {"no_ptrace": NO_PTRACE, "remote_cwd": REMOTE_CWD, "launch": LAUNCH}
