/* Declarations exposed to Python through cffi (parsed by cffi, not by a C compiler). */

/* struct qr_regs: see _types.h */

int qr_arch(void);               /* AUDIT_ARCH_* of this build */

/* Child side of the job, all in C: libzmq's threads make Python after fork() unsafe.
 * If the job does not start, err_pipe gets two ints: the step that failed and its errno. */
#define QR_STEP_SETUP ...
#define QR_STEP_CWD ...
#define QR_STEP_PTRACE ...
#define QR_STEP_SECCOMP ...
#define QR_STEP_EXEC ...
int qr_spawn_traced(const char *path, char *const argv[], char *const envp[],
                    const char *cwd, int fd_in, int fd_out, int fd_err, int err_pipe,
                    const unsigned char *filter, int filter_len, int use_path_search,
                    long ptrace_options,    /* 0: not traced; else PTRACE_SEIZE with these */
                    int terminal,           /* stdin is a pty: a session leader owns it */
                    int *leader);           /* out: the child to wait for (the job, or that leader) */
int qr_spawn_deputy(int report_fd, const char *name);

int qr_get_regs(int pid, struct qr_regs *r);
int qr_set_args(int pid, long nr, const unsigned long *args);
int qr_skip(int pid, long retval);
int qr_set_ret(int pid, long retval);
/* At a syscall-exit stop: put back the arguments (and number) a rewritten call had when the
 * job made it, keeping its result. The syscall ABI preserves argument registers, and a call
 * the kernel restarts is then the job's own again. */
int qr_restore_args(int pid, long nr, const unsigned long *args);

long qr_read_mem(int pid, unsigned long addr, void *buf, size_t len);
long qr_write_mem(int pid, unsigned long addr, const void *buf, size_t len);
long qr_read_cstr(int pid, unsigned long addr, char *buf, size_t max);

int qr_cont(int pid, int sig);
int qr_syscall(int pid, int sig);
int qr_listen(int pid);          /* PTRACE_LISTEN: keep a group-stop, let SIGCONT end it */
long qr_geteventmsg(int pid);
int qr_wait(int *status);        /* waitpid(-1, __WALL); returns pid or -errno */
/* Like qr_wait, but resumes here, without returning, the seccomp stops of calls in
 * `local_ok` (a bitmap by syscall number) whose first argument is a local fd, of calls in
 * `copy_ok` whose fd is a live local copy, and of calls in `ro_ok` whose fd is a read-only
 * copy. `home_prefix`/`copy_prefix`/`ro_prefix` are the directories placeholder, live
 * copy and read-only copy fds point into. Calls with `path_arg[nr] >= 0` whose
 * path argument there is absolute, plainly written and routes local under `policy`
 * ("L/usr\0H/proc/sys/kernel/hostname\0...", longest prefix wins, H on ties; P and
 * N prefixes, the latter followed by a digit, are always returned to Python) are
 * resumed too. When it returns a seccomp stop whose
 * registers it read, they are in *regs and *have_regs is 1 (else 0). What it read to
 * decide travels with the stop, so Python neither reads nor decides it again: *seen_kind
 * is QR_SEEN_PATH (seen holds the path argument, which does not route local),
 * QR_SEEN_FD_LINK (seen holds the /proc link of the first argument's fd, a placeholder
 * or a copy), or QR_SEEN_NONE. */
#define QR_SEEN_NONE ...
#define QR_SEEN_PATH ...
#define QR_SEEN_FD_LINK ...
/* Exit stops qr_wait_filtered takes itself: at `tid`'s next syscall-exit stop, if it is
 * the exit of call `ran`, it puts back the job's own `nr` and `args` (as qr_restore_args),
 * keeps the result and resumes the thread; qr_settled then hands over up to `max` (tid,
 * result) pairs of such stops (-ESRCH: the thread died first, or its next exit stop was
 * not that call's, and was returned). qr_settle_exit returns -ENOSPC when all its slots
 * are in use; qr_settled_forget gives up a tid's slot. */
int qr_settle_exit(int tid, long nr, long ran, const unsigned long *args);
int qr_settled(int *tids, long *rets, int max);
void qr_settled_forget(int tid);
/* How many calls on read-only copies' fds (close among them) qr_wait_filtered has let
 * run: while it has not moved, the job made no such close (it may still have let go of
 * one by dup2, munmap, exec or exit, which a sweep finds: remote/rocopies.py). */
long qr_ro_copy_calls(void);
/* By syscall number, the dirfd argument an empty path names (AT_EMPTY_PATH), or -1:
 * qr_wait_filtered runs such a call on a local fd without returning. */
void qr_set_empty_path_dirfd(const signed char *arg, int nbits);
int qr_wait_filtered(int *status, const unsigned char *local_ok, const unsigned char *copy_ok,
                     const unsigned char *ro_ok, int nbits, const char *home_prefix,
                     const char *copy_prefix, const char *ro_prefix,
                     const signed char *path_arg, const char *policy, int policy_len,
                     struct qr_regs *regs, int *have_regs, char *seen, int seen_size,
                     int *seen_kind, long long answers_until);
/* The loop's answers: a mirror of the metadata cache for calls on absolute home paths
 * (remote/loopanswers.py). qr_wait_filtered gives them, without returning, to stops whose
 * path routes home, until `answers_until` (CLOCK_MONOTONIC ns). By syscall number, `out`
 * is -2 for calls never answered there, -1 for calls with no output, else the argument
 * the answer's bytes are written at; `size` is the argument that bounds them (readlink:
 * a successful answer is then as many bytes as fit, and returns their count) or -1;
 * `keys` has bit i set if integer argument i is part of the key. */
void qr_answers_setup(const signed char *out, const signed char *size, const unsigned char *keys,
                      int nbits);
int qr_answers_put(int nr, const char *path, const unsigned long *args, long ret, const void *out,
                   int out_len);
void qr_answers_clear(void);
long qr_answers_hits(void);
/* Answer the call a seccomp stop is in with `retval` without running it, and resume the
 * thread (to its exit stop if `to_exit`): one call, with no register read. */
int qr_skip_resume(int pid, long retval, int to_exit);

/* Mount an empty tmpfs (mount `options`, read-only if `readonly`) over `path`, keeping the
 * directories in `keep` ("a\0b\0\0", absolute, below path) visible read-only in it. */
int qr_cover(const char *path, const char *options, int readonly, const char *keep);
/* At the syscall-exit stop of a call that stood in for syscall `nr`: put back nr and its
 * arguments and make the thread issue it again; `interrupted` (a signal is pending)
 * returns ERESTARTSYS instead, so the kernel restarts it or fails it with EINTR exactly as
 * it would the real call. */
int qr_restart(int pid, long nr, const unsigned long *args, int interrupted);

/* openat2(2) itself (how: a struct open_how of `size` bytes); returns the fd or -errno. */
int qr_openat2(int dirfd, const char *path, const void *how, size_t size);

/* Home side: the directory watches behind the stub's metadata cache. */
int qr_watch_init(void);                                  /* inotify fd, or -errno */
int qr_watch_add(int ifd, int dirfd, uint32_t mask);     /* wd for dirfd's inode, or -errno */
int qr_watch_rm(int ifd, int wd);
long qr_fs_magic(int fd);                                 /* statfs f_type of fd's filesystem */
#define IN_ATTRIB ...
#define IN_OPEN ...
#define IN_CLOSE_NOWRITE ...
#define IN_MODIFY ...
#define IN_CLOSE_WRITE ...
#define IN_CREATE ...
#define IN_DELETE ...
#define IN_MOVED_FROM ...
#define IN_MOVED_TO ...
#define IN_DELETE_SELF ...
#define IN_MOVE_SELF ...
#define IN_ONLYDIR ...
#define IN_MASK_ADD ...
#define IN_IGNORED ...
#define IN_Q_OVERFLOW ...
#define IN_UNMOUNT ...

/* ---- path policy, on its own ----------------------------------------------------------
 * The decision qr_wait_filtered() makes for a path argument, as a pure function: 0 when
 * the wait loop would run the call locally, 1 when it would not (the path routes home
 * under `policy`, or it is one the tracer decides: not absolute, not plainly written, under
 * a P prefix, or an N prefix followed by a digit). */
int qr_policy_routes_home(const char *path, const char *policy, int policy_len);

/* The home node's generic executor: syscall(nr, a[0..5]); the result or -errno. */
long qr_raw_syscall(long nr, const long *args);
