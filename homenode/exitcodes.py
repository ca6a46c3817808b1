"""qrun's own exit statuses. A job's status passes through unchanged (128+N for signal N),
so qrun's failures use values a job rarely returns, as env(1) and docker do."""

USAGE = 2            # bad command line
UNREACHABLE = 118    # the execution host cannot be reached (no route, refused connection)
REFUSED = 119        # the execution host refused us (ssh authentication, access rules)
SCHEDULER = 120      # the batch system (Slurm) is down or refused the job
NO_HOST = 121        # no host fits: the host list matched nothing, all silent, full or failing --require
REMOTE_CWD = 122     # plain execution: the working directory does not exist on the execution host
PROTOCOL = 123       # stub and home node disagree on protocol or syscall table
LOST = 124           # contact with the execution host was lost mid-job; the job was killed
LAUNCH = 125         # the job could not be started: unknown host, launcher or sandbox failure
NOT_EXECUTABLE = 126
NOT_FOUND = 127

DOC = {
    USAGE: "bad command line (missing command, unknown option, bad cluster file)",
    UNREACHABLE: "the execution host could not be reached",
    REFUSED: "the execution host refused the connection (e.g. ssh authentication)",
    SCHEDULER: "the batch system (Slurm) is down or refused the job",
    NO_HOST: "no host fits (empty host list, all agents silent, all full, or --require unmet)",
    REMOTE_CWD: "plain execution: the working directory does not exist on the execution host",
    PROTOCOL: "the stub and the home node run different protocol or syscall-table versions",
    LOST: "contact with the execution host was lost while the job ran; the job was killed",
    LAUNCH: "the job could not be started (unknown host, launcher failed, sandbox unavailable)",
    NOT_EXECUTABLE: "the command was found but could not be executed",
    NOT_FOUND: "the command was not found",
}
