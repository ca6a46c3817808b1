/* The thin C layer under remote/ and homenode/: fork+exec of the traced job, deputy
 * processes, and the hot ptrace/memory calls (one C call per register transfer). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <elf.h>
#include <linux/audit.h>
#include <sys/inotify.h>
#include <sys/vfs.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>

/* struct qr_regs comes first, from _types.h (see build.py). */

#if defined(__x86_64__)
#define QR_ARCH AUDIT_ARCH_X86_64

int qr_restart(int pid, long nr, const unsigned long *a, int interrupted)
{
    struct user_regs_struct u;
    if (ptrace(PTRACE_GETREGS, pid, 0, &u) < 0)
        return -errno;
    u.rdi = a[0]; u.rsi = a[1]; u.rdx = a[2]; u.r10 = a[3]; u.r8 = a[4]; u.r9 = a[5];
    u.orig_rax = (unsigned long)nr;
    if (interrupted) {
        u.rax = (unsigned long)-512L;   /* ERESTARTSYS: the kernel applies SA_RESTART */
    } else {
        u.rax = (unsigned long)nr;      /* execute the `syscall` instruction again */
        u.rip -= 2;
        u.orig_rax = (unsigned long)-1L;
    }
    return ptrace(PTRACE_SETREGS, pid, 0, &u) < 0 ? -errno : 0;
}
#elif defined(__aarch64__)
#define QR_ARCH AUDIT_ARCH_AARCH64
#else
#error "qrun supports x86_64 and aarch64"
#endif

int qr_arch(void) { return (int)QR_ARCH; }

#define QR_STEP_SETUP 1
#define QR_STEP_CWD 2
#define QR_STEP_PTRACE 3
#define QR_STEP_SECCOMP 4
#define QR_STEP_EXEC 5

#define QR_SEEN_NONE 0
#define QR_SEEN_PATH 1
#define QR_SEEN_FD_LINK 2

/* The child's report of what failed before the job ran: which step, and its errno. */
static void fail_and_exit(int fd, int step, int code)
{
    int msg[2] = { step, errno };
    if (fd >= 0) {
        ssize_t n = write(fd, msg, sizeof msg);
        (void)n;
    }
    _exit(code);
}

/* close_range(lo, hi), or one close at a time where the kernel has no close_range (before
 * 5.9): no fd of the stub may leak into the job or a deputy. */
static void close_fds(unsigned lo, unsigned hi)
{
    if (lo > hi || syscall(SYS_close_range, lo, hi, 0) == 0)
        return;
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = lo; fd <= (long)hi && fd < (max > 0 ? max : 65536); fd++)
        close((int)fd);
}

/* The job's own process: wait to be seized, then set up and exec. Never returns. */
static void job_child(const char *path, char *const argv[], char *const envp[], const char *cwd,
                      int err_pipe, const unsigned char *filter, int filter_len,
                      int use_path_search, int traced, int sync_fd, pid_t parent)
{
    if (traced) {
        char go;
        if (read(sync_fd, &go, 1) != 1)
            _exit(126);                 /* not seized: the stub says why */
        close(sync_fd);
    }
    /* Dies with its parent; and if that is already gone, does not run at all. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
        fail_and_exit(err_pipe, QR_STEP_SETUP, 126);
    if (cwd && chdir(cwd) < 0)
        fail_and_exit(err_pipe, QR_STEP_CWD, 126);
    if (traced) {
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            fail_and_exit(err_pipe, QR_STEP_SECCOMP, 126);
        struct sock_fprog prog = { .len = (unsigned short)(filter_len / 8),
                                   .filter = (struct sock_filter *)filter };
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
            fail_and_exit(err_pipe, QR_STEP_SECCOMP, 126);
    }
    if (use_path_search) {
        environ = (char **)envp;
        execvp(path, argv);
    } else {
        execve(path, argv, envp);
    }
    fail_and_exit(err_pipe, QR_STEP_EXEC, errno == ENOENT || errno == ENOTDIR ? 127 : 126);
}

/* With a terminal: the session leader that owns the pty, with the job in a process group
 * of its own in the foreground. A job that led the session itself would be an orphaned
 * process group, and the kernel ignores Ctrl-Z (SIGTSTP) for those. It ends as the job
 * ends, with the same status. */
static void session_leader(int pid_pipe, int err_pipe, int sync_fd, const char *path,
                           char *const argv[], char *const envp[], const char *cwd,
                           const unsigned char *filter, int filter_len, int use_path_search,
                           int traced)
{
    if (setsid() < 0 || ioctl(0, TIOCSCTTY, 0) < 0)
        fail_and_exit(err_pipe, QR_STEP_SETUP, 126);
    pid_t me = getpid();
    pid_t job = fork();
    if (job < 0)
        fail_and_exit(err_pipe, QR_STEP_SETUP, 126);
    if (job == 0) {
        close(pid_pipe);
        sigset_t ttou, old;
        sigemptyset(&ttou);
        sigaddset(&ttou, SIGTTOU);
        sigprocmask(SIG_BLOCK, &ttou, &old);
        if (setpgid(0, 0) < 0 || tcsetpgrp(0, getpid()) < 0)
            fail_and_exit(err_pipe, QR_STEP_SETUP, 126);
        sigprocmask(SIG_SETMASK, &old, NULL);
        job_child(path, argv, envp, cwd, err_pipe, filter, filter_len, use_path_search,
                  traced, sync_fd, me);
    }
    setpgid(job, job);   /* (here too: the stub may signal the group before the job runs) */
    ssize_t n = write(pid_pipe, &job, sizeof job);
    (void)n;
    close(pid_pipe);
    if (sync_fd >= 0)
        close(sync_fd);
    close(err_pipe);
    int st;
    while (waitpid(job, &st, 0) < 0) {
        if (errno != EINTR)
            _exit(126);
    }
    if (WIFSIGNALED(st)) {
        signal(WTERMSIG(st), SIG_DFL);
        kill(getpid(), WTERMSIG(st));
        _exit(128 + WTERMSIG(st));
    }
    _exit(WEXITSTATUS(st));
}

int qr_spawn_traced(const char *path, char *const argv[], char *const envp[],
                    const char *cwd, int fd_in, int fd_out, int fd_err, int err_pipe,
                    const unsigned char *filter, int filter_len, int use_path_search,
                    long ptrace_options, int terminal, int *leader)
{
    int traced = ptrace_options != 0;
    int sync[2] = { -1, -1 }, pids[2] = { -1, -1 };
    if (traced && pipe2(sync, O_CLOEXEC) < 0)
        return -errno;
    if (terminal && pipe2(pids, O_CLOEXEC) < 0) {
        int e = errno;
        if (traced) { close(sync[0]); close(sync[1]); }
        return -e;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        if (traced) { close(sync[0]); close(sync[1]); }
        if (terminal) { close(pids[0]); close(pids[1]); }
        return -e;
    }
    if (pid > 0) {
        pid_t job = pid;
        *leader = pid;
        /* The job's process group exists before we return, as a shell makes it on both
         * sides of the fork: a signal home sends at once (a Ctrl-C while the job starts)
         * goes to the group, which the child may not have made yet. */
        if (!terminal) {
            setpgid(pid, pid);
        } else {
            close(pids[1]);
            if (read(pids[0], &job, sizeof job) != sizeof job)
                job = pid;              /* the leader failed; it says why on err_pipe */
            close(pids[0]);
        }
        if (!traced)
            return job;
        /* PTRACE_SEIZE, not TRACEME: group-stops are then told apart (PTRACE_EVENT_STOP)
         * and can be kept with PTRACE_LISTEN, so job control works. The job waits on
         * `sync` until it is seized; if it cannot be, it is killed and says why. */
        close(sync[0]);
        if (ptrace(PTRACE_SEIZE, job, 0, (void *)ptrace_options) < 0) {
            int msg[2] = { QR_STEP_PTRACE, errno };
            ssize_t n = write(err_pipe, msg, sizeof msg);
            (void)n;
            kill(job, SIGKILL);
        } else {
            ssize_t n = write(sync[1], "g", 1);
            (void)n;
        }
        close(sync[1]);
        return job;
    }

    /* Child: only async-signal-safe calls from here on. Every signal the stub handles goes
     * back to SIG_DFL: its handlers (Python's, SIGINT's above all) would run here until
     * exec, and a signal sent to the job meanwhile (a Ctrl-C as it starts) would be taken
     * and lost. So do SIGPIPE and SIGXFSZ, which the stub ignores (its stderr may outlive
     * qrun's reader: a lease): the job starts with the default, as a shell would give it. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++) {
        struct sigaction old;
        if (sigaction(s, NULL, &old) == 0 && (s == SIGPIPE || s == SIGXFSZ ||
                                              (old.sa_handler != SIG_IGN && old.sa_handler != SIG_DFL)))
            sigaction(s, &dfl, NULL);
    }
    if (traced)
        close(sync[1]);
    if (terminal)
        close(pids[0]);
    if (dup2(fd_in, 0) < 0 || dup2(fd_out, 1) < 0 || dup2(fd_err, 2) < 0)
        fail_and_exit(err_pipe, QR_STEP_SETUP, 126);
    /* Keep err_pipe (close-on-exec, so a failed exec can report), sync and the pid pipe;
     * close everything else the stub had open (zmq sockets, pipes). */
    int keep[3] = { err_pipe, traced ? sync[0] : -1, terminal ? pids[1] : -1 };
    for (int fd = 3; fd < 1024; fd++) {
        if (fd != keep[0] && fd != keep[1] && fd != keep[2])
            close(fd);
    }
    close_fds(1024, ~0U);
    if (fcntl(err_pipe, F_SETFD, FD_CLOEXEC) < 0)
        fail_and_exit(err_pipe, QR_STEP_SETUP, 126);
    if (terminal)
        session_leader(pids[1], err_pipe, traced ? sync[0] : -1, path, argv, envp, cwd,
                       filter, filter_len, use_path_search, traced);
    if (setpgid(0, 0) < 0)
        fail_and_exit(err_pipe, QR_STEP_SETUP, 126);
    job_child(path, argv, envp, cwd, err_pipe, filter, filter_len, use_path_search, traced,
              traced ? sync[0] : -1, parent);
    return -1;
}

static int deputy_report_fd = -1;

static void deputy_handler(int sig)
{
    int32_t msg[2] = { (int32_t)getpid(), sig };
    ssize_t n = write(deputy_report_fd, msg, sizeof msg);
    (void)n;
    /* qrun stops when the job does; a SIGCONT sent to the job's pid must wake it too, or
     * nobody would pass the SIGCONT on. */
    if (sig == SIGCONT)
        kill(getppid(), SIGCONT);
}

int qr_spawn_deputy(int report_fd, const char *name)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid < 0 ? -errno : pid;
    deputy_report_fd = report_fd;
    /* Dies with qrun; a qrun that died before the prctl took effect is seen as a new
     * parent, and the deputy goes at once instead of living on. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
        _exit(1);
    /* Own process group: terminal signals reach qrun, which forwards them once. A deputy
     * still in qrun's group is only less tidy: it never fails the job. */
    (void)setpgid(0, 0);
    if (name)
        prctl(PR_SET_NAME, name, 0, 0, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = deputy_handler;
    sa.sa_flags = SA_RESTART;
    sigfillset(&sa.sa_mask);
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP)
            continue;
        sigaction(s, &sa, NULL);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    close_fds(3, (unsigned)report_fd - 1);
    close_fds((unsigned)report_fd + 1, ~0U);
    for (;;)
        pause();
}

#if defined(__x86_64__)
int qr_get_regs(int pid, struct qr_regs *r)
{
    struct user_regs_struct u;
    if (ptrace(PTRACE_GETREGS, pid, 0, &u) < 0)
        return -errno;
    r->nr = (long)u.orig_rax;
    r->args[0] = u.rdi; r->args[1] = u.rsi; r->args[2] = u.rdx;
    r->args[3] = u.r10; r->args[4] = u.r8;  r->args[5] = u.r9;
    r->sp = u.rsp; r->ip = u.rip; r->ret = (long)u.rax;
    return 0;
}

int qr_set_args(int pid, long nr, const unsigned long *a)
{
    struct user_regs_struct u;
    if (ptrace(PTRACE_GETREGS, pid, 0, &u) < 0)
        return -errno;
    u.orig_rax = (unsigned long)nr;
    u.rdi = a[0]; u.rsi = a[1]; u.rdx = a[2]; u.r10 = a[3]; u.r8 = a[4]; u.r9 = a[5];
    return ptrace(PTRACE_SETREGS, pid, 0, &u) < 0 ? -errno : 0;
}

int qr_skip(int pid, long retval)
{
    /* Two words of the register file, not all of it: nothing else changes. */
    if (ptrace(PTRACE_POKEUSER, pid, offsetof(struct user_regs_struct, orig_rax), (void *)-1L) < 0 ||
        ptrace(PTRACE_POKEUSER, pid, offsetof(struct user_regs_struct, rax), (void *)retval) < 0)
        return -errno;
    return 0;
}

int qr_set_ret(int pid, long retval)
{
    return ptrace(PTRACE_POKEUSER, pid, offsetof(struct user_regs_struct, rax),
                  (void *)retval) < 0 ? -errno : 0;
}

int qr_restore_args(int pid, long nr, const unsigned long *a)
{
    /* At the exit stop rax holds the result and is kept; orig_rax is what the kernel
     * issues again if it restarts the call. */
    return qr_set_args(pid, nr, a);
}
#elif defined(__aarch64__)
static int getregset(int pid, struct user_pt_regs *u)
{
    struct iovec io = { u, sizeof *u };
    return ptrace(PTRACE_GETREGSET, pid, NT_PRSTATUS, &io) < 0 ? -errno : 0;
}
static int setregset(int pid, struct user_pt_regs *u)
{
    struct iovec io = { u, sizeof *u };
    return ptrace(PTRACE_SETREGSET, pid, NT_PRSTATUS, &io) < 0 ? -errno : 0;
}
static int set_nr(int pid, int nr)
{
    struct iovec io = { &nr, sizeof nr };
    return ptrace(PTRACE_SETREGSET, pid, NT_ARM_SYSTEM_CALL, &io) < 0 ? -errno : 0;
}
int qr_get_regs(int pid, struct qr_regs *r)
{
    struct user_pt_regs u;
    int nr;
    struct iovec io = { &nr, sizeof nr };
    int e = getregset(pid, &u);
    if (e < 0)
        return e;
    if (ptrace(PTRACE_GETREGSET, pid, NT_ARM_SYSTEM_CALL, &io) < 0)
        return -errno;
    r->nr = nr;
    for (int i = 0; i < 6; i++)
        r->args[i] = u.regs[i];
    r->sp = u.sp; r->ip = u.pc; r->ret = (long)u.regs[0];
    return 0;
}
int qr_set_args(int pid, long nr, const unsigned long *a)
{
    struct user_pt_regs u;
    int e = getregset(pid, &u);
    if (e < 0)
        return e;
    for (int i = 0; i < 6; i++)
        u.regs[i] = a[i];
    e = setregset(pid, &u);
    return e < 0 ? e : set_nr(pid, (int)nr);
}
int qr_skip(int pid, long retval)
{
    struct user_pt_regs u;
    int e = getregset(pid, &u);
    if (e < 0)
        return e;
    u.regs[0] = (unsigned long)retval;
    e = setregset(pid, &u);
    return e < 0 ? e : set_nr(pid, -1);
}
int qr_set_ret(int pid, long retval)
{
    struct user_pt_regs u;
    int e = getregset(pid, &u);
    if (e < 0)
        return e;
    u.regs[0] = (unsigned long)retval;
    return setregset(pid, &u);
}
int qr_restore_args(int pid, long nr, const unsigned long *a)
{
    /* x0 is both the first argument and the result: it keeps the result. A restart by the
     * kernel takes x0 from orig_x0, which ptrace cannot set. */
    struct user_pt_regs u;
    int e = getregset(pid, &u);
    if (e < 0)
        return e;
    for (int i = 1; i < 6; i++)
        u.regs[i] = a[i];
    e = setregset(pid, &u);
    return e < 0 ? e : set_nr(pid, (int)nr);
}
int qr_restart(int pid, long nr, const unsigned long *a, int interrupted)
{
    /* The kernel's own restart would reload x0 from the rewritten call's first argument,
     * so both cases go back to the svc instruction here: a handler then runs first and
     * the call is made again after it, as with SA_RESTART. */
    struct user_pt_regs u;
    int e = getregset(pid, &u);
    (void)interrupted;
    if (e < 0)
        return e;
    for (int i = 0; i < 6; i++)
        u.regs[i] = a[i];
    u.regs[8] = (unsigned long)nr;
    u.pc -= 4;
    e = setregset(pid, &u);
    return e < 0 ? e : set_nr(pid, -1);
}
#endif

static long mem_fallback(int pid, unsigned long addr, void *buf, size_t len, int writing)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", pid);
    int fd = open(path, writing ? O_WRONLY | O_CLOEXEC : O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = writing ? pwrite(fd, buf, len, (off_t)addr) : pread(fd, buf, len, (off_t)addr);
    /* An unmapped address reads as EIO through /proc/PID/mem; the kernel says EFAULT. */
    long r = n < 0 ? (errno == EIO ? -EFAULT : -errno) : n;
    close(fd);
    return r;
}

long qr_read_mem(int pid, unsigned long addr, void *buf, size_t len)
{
    struct iovec local = { buf, len }, remote = { (void *)addr, len };
    ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n < 0 && errno != EFAULT)
        return mem_fallback(pid, addr, buf, len, 0);
    return n < 0 ? -errno : n;
}

long qr_write_mem(int pid, unsigned long addr, const void *buf, size_t len)
{
    struct iovec local = { (void *)buf, len }, remote = { (void *)addr, len };
    ssize_t n = process_vm_writev(pid, &local, 1, &remote, 1, 0);
    if (n == (ssize_t)len)
        return n;
    /* Read-only pages: /proc/PID/mem writes through page protections (FOLL_FORCE),
     * as the kernel would when it fills a buffer in a syscall. */
    return mem_fallback(pid, addr, (void *)buf, len, 1);
}

long qr_read_cstr(int pid, unsigned long addr, char *buf, size_t max)
{
    size_t got = 0;
    while (got < max) {
        /* Never cross a page boundary in one read: the next page may be unmapped. */
        size_t chunk = 4096 - ((addr + got) & 4095);
        if (chunk > max - got)
            chunk = max - got;
        long n = qr_read_mem(pid, addr + got, buf + got, chunk);
        if (n <= 0)
            return n < 0 ? n : -EFAULT;
        void *nul = memchr(buf + got, 0, (size_t)n);
        if (nul)
            return (long)((char *)nul - buf);
        got += (size_t)n;
    }
    return -ENAMETOOLONG;
}

int qr_cont(int pid, int sig) { return ptrace(PTRACE_CONT, pid, 0, (void *)(long)sig) < 0 ? -errno : 0; }
int qr_syscall(int pid, int sig) { return ptrace(PTRACE_SYSCALL, pid, 0, (void *)(long)sig) < 0 ? -errno : 0; }

int qr_skip_resume(int pid, long retval, int to_exit)
{
    int e = qr_skip(pid, retval);
    if (e < 0)
        return e;
    return to_exit ? qr_syscall(pid, 0) : qr_cont(pid, 0);
}
int qr_listen(int pid) { return ptrace(PTRACE_LISTEN, pid, 0, 0) < 0 ? -errno : 0; }

long qr_geteventmsg(int pid)
{
    unsigned long msg = 0;
    if (ptrace(PTRACE_GETEVENTMSG, pid, 0, &msg) < 0)
        return -errno;
    return (long)msg;
}

int qr_wait(int *status)
{
    for (;;) {
        pid_t p = waitpid(-1, status, __WALL);
        if (p >= 0)
            return p;
        if (errno != EINTR)
            return -errno;
    }
}

int qr_openat2(int dirfd, const char *path, const void *how, size_t size)
{
    long fd = syscall(SYS_openat2, dirfd, path, how, size);
    return fd < 0 ? -errno : (int)fd;
}

int qr_watch_init(void)
{
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* inotify_add_watch takes a path: name the directory through its descriptor, so the
 * watch lands on the inode that was resolved, whatever its name is by now. */
int qr_watch_add(int ifd, int dirfd, uint32_t mask)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", dirfd);
    int wd = inotify_add_watch(ifd, path, mask);
    return wd < 0 ? -errno : wd;
}

int qr_watch_rm(int ifd, int wd)
{
    return inotify_rm_watch(ifd, wd) < 0 ? -errno : 0;
}

long qr_fs_magic(int fd)
{
    struct statfs sf;
    if (fstatfs(fd, &sf) < 0)
        return -errno;
    return (long)sf.f_type;
}

/* mkdir -p of `path` (absolute), with mode 0755 for what it creates. */
static int make_dirs(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n >= sizeof buf)
        return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0755) < 0 && errno != EEXIST)
                return -errno;
            *p = c;
            if (c == 0)
                return 0;
        }
    }
}

#define QR_MAX_KEEP 16

int qr_cover(const char *path, const char *options, int readonly, const char *keep)
{
    /* Open what must stay visible before the tmpfs hides it: the bind mounts below are
     * made from these fds, so they show the original directories. */
    int fds[QR_MAX_KEEP];
    const char *names[QR_MAX_KEEP];
    int nkeep = 0, rc = 0;
    for (const char *k = keep; k && *k && nkeep < QR_MAX_KEEP; k += strlen(k) + 1) {
        int fd = open(k, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            continue;               /* nothing there: nothing to keep */
        fds[nkeep] = fd;
        names[nkeep++] = k;
    }
    if (mount("qrun-cover", path, "tmpfs", MS_NOSUID | MS_NODEV, options) < 0) {
        rc = -errno;
        goto out;
    }
    for (int i = 0; i < nkeep; i++) {
        char src[64];
        snprintf(src, sizeof src, "/proc/self/fd/%d", fds[i]);
        if ((rc = make_dirs(names[i])) < 0)
            goto out;
        if (mount(src, names[i], NULL, MS_BIND | MS_REC, NULL) < 0) {
            rc = -errno;
            goto out;
        }
        /* Read-only where the kernel lets us (a user namespace may not): best effort. */
        mount(NULL, names[i], NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL);
    }
    if (readonly && mount(NULL, path, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, options) < 0)
        rc = -errno;
out:
    for (int i = 0; i < nkeep; i++)
        close(fds[i]);
    return rc;
}

enum { ROUTE_LOCAL, ROUTE_HOME, ROUTE_TRACER };

/* Where `path` goes: ROUTE_LOCAL or ROUTE_HOME by the policy if it is absolute and plainly
 * written (no "." or ".." components, no "//"), else ROUTE_TRACER, as for the P and N
 * prefixes: the tracer decides those. */
static int route_of(const char *path, const char *policy, int policy_len)
{
    if (path[0] != '/' || strstr(path, "//") || strstr(path, "/./") || strstr(path, "/../"))
        return ROUTE_TRACER;
    size_t n = strlen(path);
    if ((n >= 2 && strcmp(path + n - 2, "/.") == 0) || (n >= 3 && strcmp(path + n - 3, "/..") == 0))
        return ROUTE_TRACER;
    long best = -1;
    int local = 0;
    for (const char *p = policy; p < policy + policy_len; p += strlen(p) + 1) {
        char kind = p[0];
        const char *prefix = p + 1;
        size_t pl = strlen(prefix);
        if (strncmp(path, prefix, pl) != 0)
            continue;
        if (kind == 'N') {          /* the tracer's when a digit follows (/proc/<pid>) */
            if (path[pl] >= '0' && path[pl] <= '9')
                return ROUTE_TRACER;
            continue;
        }
        int under = path[pl] == 0 || path[pl] == '/' || (pl == 1 && prefix[0] == '/');
        if (!under)
            continue;
        if (kind == 'P')            /* the tracer's: /proc/self, /dev/fd, ... */
            return ROUTE_TRACER;
        if ((long)pl > best || ((long)pl == best && kind == 'H')) {
            best = (long)pl;
            local = kind == 'L';
        }
    }
    return local ? ROUTE_LOCAL : ROUTE_HOME;
}

static int routes_local(const char *path, const char *policy, int policy_len)
{
    return route_of(path, policy, policy_len) == ROUTE_LOCAL;
}

/* ---- the loop's answers ---------------------------------------------------------------
 * A mirror of the stub's metadata cache for calls on absolute home paths, keyed by what
 * the job passed (syscall number, path as written, its integer arguments), so a stop that
 * the cache would answer is answered here without Python. Python fills it with entries of
 * the cache (remote/loopanswers.py) and empties it (a new generation) whenever the cache
 * forgets anything; the loop answers only until the deadline Python gives each wait. */
#define ANSWER_SLOTS 4096
#define ANSWER_PROBES 16
#define ANSWER_PATH 256
#define ANSWER_OUT 256

struct answer {
    uint64_t gen;
    int nr;
    long keys[6];
    long ret;
    int out_len;
    char path[ANSWER_PATH];
    unsigned char out[ANSWER_OUT];
};

static struct answer answers[ANSWER_SLOTS];
static uint64_t answers_gen = 1;   /* (64 bits: it never wraps to an old one) */
static long answers_hits;
static signed char answer_out[1024];     /* by nr: -2 never answered here, -1 no output, else its arg */
static signed char answer_size[1024];    /* by nr: the argument that limits the output (readlink), or -1 */
static unsigned char answer_keys[1024];  /* by nr: the integer arguments that are part of the key */

void qr_answers_setup(const signed char *out, const signed char *size, const unsigned char *keys, int nbits)
{
    int n = nbits < 1024 ? nbits : 1024;
    memset(answer_out, -2, sizeof answer_out);
    memset(answer_size, -1, sizeof answer_size);
    memset(answer_keys, 0, sizeof answer_keys);
    memcpy(answer_out, out, (size_t)n);
    memcpy(answer_size, size, (size_t)n);
    memcpy(answer_keys, keys, (size_t)n);
}

void qr_answers_clear(void) { answers_gen++; }
long qr_answers_hits(void) { return answers_hits; }

static uint64_t answer_hash(int nr, const long *keys, const char *path)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)nr;
    for (int i = 0; i < 6; i++)
        h = (h ^ (uint64_t)keys[i]) * 1099511628211ULL;
    for (const unsigned char *p = (const unsigned char *)path; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static void answer_key(int nr, const unsigned long *args, long *keys)
{
    for (int i = 0; i < 6; i++)
        keys[i] = answer_keys[nr] & (1 << i) ? (long)args[i] : 0;
}

static int same_answer(const struct answer *a, int nr, const long *keys, const char *path)
{
    return a->gen == answers_gen && a->nr == nr && memcmp(a->keys, keys, sizeof a->keys) == 0 &&
           strcmp(a->path, path) == 0;
}

/* Keep an answer: `ret` (a result, or -errno) and the `out_len` bytes the call writes at
 * its output argument. 0, or -1 if it is not one the loop can give (too long). */
int qr_answers_put(int nr, const char *path, const unsigned long *args, long ret, const void *out,
                   int out_len)
{
    size_t pl = strlen(path);
    if (nr < 0 || nr >= 1024 || answer_out[nr] == -2 || pl >= ANSWER_PATH || out_len < 0 ||
        out_len > ANSWER_OUT)
        return -1;
    long keys[6];
    answer_key(nr, args, keys);
    uint64_t h = answer_hash(nr, keys, path);
    struct answer *slot = &answers[h % ANSWER_SLOTS];   /* (all probes taken: the first goes) */
    for (int i = 0; i < ANSWER_PROBES; i++) {
        struct answer *a = &answers[(h + (uint64_t)i) % ANSWER_SLOTS];
        if (a->gen != answers_gen || same_answer(a, nr, keys, path)) {
            slot = a;
            break;
        }
    }
    slot->gen = answers_gen;
    slot->nr = nr;
    memcpy(slot->keys, keys, sizeof keys);
    slot->ret = ret;
    slot->out_len = out_len;
    memcpy(slot->path, path, pl + 1);
    memcpy(slot->out, out, (size_t)out_len);
    return 0;
}

static const struct answer *answer_for(int nr, const unsigned long *args, const char *path)
{
    long keys[6];
    answer_key(nr, args, keys);
    uint64_t h = answer_hash(nr, keys, path);
    for (int i = 0; i < ANSWER_PROBES; i++) {
        const struct answer *a = &answers[(h + (uint64_t)i) % ANSWER_SLOTS];
        if (same_answer(a, nr, keys, path))
            return a;
    }
    return NULL;
}

static long long monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Answer the stop from the mirror if it holds this very call; 1 if answered and resumed. */
static int answered_here(int pid, const struct qr_regs *r, const char *path, long long until)
{
    long nr = r->nr;
    if (nr >= 1024 || answer_out[nr] == -2 || monotonic_ns() >= until)
        return 0;
    const struct answer *a = answer_for((int)nr, r->args, path);
    if (a == NULL)
        return 0;
    long ret = a->ret, len = a->out_len;
    if (answer_size[nr] >= 0) {   /* readlink: as much of the target as fits */
        unsigned long room = r->args[answer_size[nr]];
        if (room == 0 || room > 0x7fffffffUL)
            return 0;    /* (the kernel's EINVAL for any such buffer: Python's) */
        if (ret >= 0 && (unsigned long)len > room)
            len = (long)room;
        if (ret >= 0)
            ret = len;
    }
    if (ret >= 0 && len > 0 && qr_write_mem(pid, r->args[answer_out[nr]], a->out, (size_t)len) != len)
        return 0;    /* (a bad pointer: Python answers it, with EFAULT) */
    if (qr_skip(pid, ret) < 0 || (ptrace(PTRACE_CONT, pid, 0, 0) < 0 && errno != ESRCH))
        return 0;
    answers_hits++;
    return 1;
}

/* Hand a stop to Python with what was read to decide it. */
static int seen_as(int pid, int kind, const char *what, size_t n, char *seen, int seen_size,
                   int *seen_kind)
{
    if (n + 1 > (size_t)seen_size)
        return pid;                  /* too long to pass on: Python reads it again */
    memcpy(seen, what, n + 1);
    *seen_kind = kind;
    return pid;
}

/* By syscall number: the dirfd argument that an empty path names (the *at calls with
 * AT_EMPTY_PATH: glibc's fstat is newfstatat(fd, "", ..)), or -1. */
static signed char empty_path_dirfd[1024];

void qr_set_empty_path_dirfd(const signed char *arg, int nbits)
{
    memset(empty_path_dirfd, -1, sizeof empty_path_dirfd);
    memcpy(empty_path_dirfd, arg, (size_t)(nbits < 1024 ? nbits : 1024));
}

enum { FD_LOCAL, FD_PLACEHOLDER, FD_COPY, FD_RO_COPY };

/* The directories qrun's own fds point into: placeholders', copies' (live files) and
 * read-only copies'. */
struct qruns_dirs {
    const char *ph, *copy, *ro;
    size_t ph_len, copy_len, ro_len;
};

/* What fd `fd` of `pid` is, by its /proc link: that link is left in `target` (its length
 * in *len, <= 0 if it could not be read, which makes the fd local: the kernel answers). */
static int fd_kind(int pid, int fd, const struct qruns_dirs *d, char *target, size_t size, ssize_t *len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, fd);
    ssize_t n = fd < 0 ? -1 : readlink(path, target, size - 1);
    *len = n;
    if (n <= 0)
        return FD_LOCAL;
    target[n] = 0;
    if ((size_t)n > d->ph_len && strncmp(target, d->ph, d->ph_len) == 0)
        return FD_PLACEHOLDER;
    if ((size_t)n > d->copy_len && strncmp(target, d->copy, d->copy_len) == 0)
        return FD_COPY;
    if ((size_t)n > d->ro_len && strncmp(target, d->ro, d->ro_len) == 0)
        return FD_RO_COPY;
    return FD_LOCAL;
}

/* ---- exit stops the wait loop takes ----------------------------------------------------
 * A rewritten call's exit stop needs only the job's arguments put back: the loop does
 * that itself and keeps the result for Python, which never wakes for the stop. */
#define QR_SETTLE_SLOTS 64
enum { SLOT_FREE, SLOT_WAITING, SLOT_DONE };
static struct settle_slot {
    int tid, state;
    long nr, ran, ret;   /* the job's call, the call that runs instead, its result */
    unsigned long args[6];
} settle_slots[QR_SETTLE_SLOTS];

int qr_settle_exit(int tid, long nr, long ran, const unsigned long *args)
{
    for (int i = 0; i < QR_SETTLE_SLOTS; i++) {
        struct settle_slot *s = &settle_slots[i];
        if (s->state == SLOT_FREE) {
            s->tid = tid;
            s->nr = nr;
            s->ran = ran;
            memcpy(s->args, args, sizeof s->args);
            s->state = SLOT_WAITING;
            return 0;
        }
    }
    return -ENOSPC;
}

void qr_settled_forget(int tid)
{
    for (int i = 0; i < QR_SETTLE_SLOTS; i++)
        if (settle_slots[i].state != SLOT_FREE && settle_slots[i].tid == tid)
            settle_slots[i].state = SLOT_FREE;
}

int qr_settled(int *tids, long *rets, int max)
{
    int n = 0;
    for (int i = 0; i < QR_SETTLE_SLOTS && n < max; i++) {
        struct settle_slot *s = &settle_slots[i];
        if (s->state == SLOT_DONE) {
            tids[n] = s->tid;
            rets[n++] = s->ret;
            s->state = SLOT_FREE;
        }
    }
    return n;
}

static struct settle_slot *settle_waiting(int pid)
{
    for (int i = 0; i < QR_SETTLE_SLOTS; i++)
        if (settle_slots[i].state == SLOT_WAITING && settle_slots[i].tid == pid)
            return &settle_slots[i];
    return NULL;
}

/* The exit stop of a call whose exit the loop takes: put the job's arguments back, keep
 * the result, resume. 0 if the stop is not one of those (or the thread vanished). */
static int settle(int pid)
{
    struct settle_slot *s = settle_waiting(pid);
    struct qr_regs r;
    if (s == NULL)
        return 0;
    /* (not the call's exit stop, e.g. another thread's execve took the tid over: Python's) */
    if (qr_get_regs(pid, &r) < 0 || r.nr != s->ran || qr_restore_args(pid, s->nr, s->args) < 0) {
        s->ret = -ESRCH;
        s->state = SLOT_DONE;
        return 0;
    }
    s->ret = r.ret;
    s->state = SLOT_DONE;
    return ptrace(PTRACE_CONT, pid, 0, 0) == 0 || errno == ESRCH;
}

static long ro_copy_calls;   /* calls on read-only copies' fds the loop let run */

long qr_ro_copy_calls(void)
{
    return ro_copy_calls;
}

int qr_wait_filtered(int *status, const unsigned char *local_ok, const unsigned char *copy_ok,
                     const unsigned char *ro_ok, int nbits, const char *home_prefix,
                     const char *copy_prefix, const char *ro_prefix,
                     const signed char *path_arg, const char *policy, int policy_len,
                     struct qr_regs *regs, int *have_regs, char *seen, int seen_size,
                     int *seen_kind, long long answers_until)
{
    if (nbits > 1024)
        nbits = 1024;    /* (the loop's own tables by syscall number) */
    const struct qruns_dirs dirs = {home_prefix, copy_prefix, ro_prefix,
                                    strlen(home_prefix), strlen(copy_prefix), strlen(ro_prefix)};
    char target[4096];
    ssize_t link_len;
    struct qr_regs r;
    for (;;) {
        *have_regs = 0;
        *seen_kind = QR_SEEN_NONE;
        int pid = qr_wait(status);
        if (pid < 0)
            return pid;
        int st = *status;
        if (WIFEXITED(st) || WIFSIGNALED(st)) {
            struct settle_slot *s = settle_waiting(pid);
            if (s != NULL) {   /* killed before its exit stop: the call did not complete */
                s->ret = -ESRCH;
                s->state = SLOT_DONE;
            }
            return pid;
        }
        if (WIFSTOPPED(st) && (st >> 8) == (SIGTRAP | 0x80) && settle(pid))
            continue;
        /* Only seccomp stops qualify; everything else is Python's. */
        if (!WIFSTOPPED(st) || (st >> 8) != (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8)))
            return pid;
        if (qr_get_regs(pid, &r) < 0)
            return pid;
        *regs = r;
        *have_regs = 1;
        if (r.nr < 0 || r.nr >= nbits)
            return pid;
        long nr = r.nr;
        int pa = path_arg[nr];
        if (pa >= 0) {
            long n = qr_read_cstr(pid, r.args[pa], target, sizeof target);
            if (n == 0 && empty_path_dirfd[nr] >= 0) {
                /* An empty path names the dirfd itself: a local fd's call just runs (the
                 * kernel says ENOENT without AT_EMPTY_PATH, as it would anyway). */
                int dfd = (int)r.args[empty_path_dirfd[nr]];
                if (dfd == AT_FDCWD || fd_kind(pid, dfd, &dirs, target, sizeof target, &link_len) != FD_LOCAL)
                    return pid;
            } else {
                if (n <= 0)
                    return pid;
                int route = route_of(target, policy, policy_len);
                if (route == ROUTE_HOME && answered_here(pid, &r, target, answers_until))
                    continue;
                if (route != ROUTE_LOCAL)
                    return seen_as(pid, QR_SEEN_PATH, target, (size_t)n, seen, seen_size, seen_kind);
            }
        } else {
            if (!(local_ok[nr / 8] & (1 << (nr % 8))))
                return pid;
            int kind = fd_kind(pid, (int)r.args[0], &dirs, target, sizeof target, &link_len);
            if (kind == FD_PLACEHOLDER ||   /* below: not a copy's data path */
                (kind == FD_COPY && !(copy_ok[nr / 8] & (1 << (nr % 8)))) ||
                (kind == FD_RO_COPY && !(ro_ok[nr / 8] & (1 << (nr % 8)))))
                return seen_as(pid, QR_SEEN_FD_LINK, target, (size_t)link_len, seen, seen_size, seen_kind);
            if (kind == FD_RO_COPY)
                ro_copy_calls++;
        }
        /* A local fd or path (or none: the kernel will say EBADF): the kernel runs it. */
        if (ptrace(PTRACE_CONT, pid, 0, 0) < 0 && errno != ESRCH)
            return pid;
    }
}

/* ---- path policy, on its own ----------------------------------------------------------
 * The wait loop's path decision as a pure function, so that tests can hold it against
 * qrun.syscalls.paths.PathPolicy (tests/test_table_sources.py). It is routes_local()
 * itself, the code qr_wait_filtered() calls: nothing is duplicated. */
int qr_policy_routes_home(const char *path, const char *policy, int policy_len)
{
    return !routes_local(path, policy, policy_len);
}
/* ---- end of path policy ---------------------------------------------------------------- */

/* ---- the home node's raw system calls ------------------------------------------------ */

/* syscall(2) with six word-sized arguments (pointers passed as their addresses); returns
 * the result, or -errno. */
long qr_raw_syscall(long nr, const long *a)
{
    long r = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    return r < 0 ? -errno : r;
}
