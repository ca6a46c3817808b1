/* Shared helpers for the qrun conformance probes (header only).
 *
 * Probe contract (see tests/conformance.py):
 *   PROBE WORKDIR SELF
 * cwd == WORKDIR (empty, same absolute path on every run); SELF is the
 * absolute path of the probe binary, for probes that copy or re-exec
 * themselves (/proc/self/exe is deliberately not used).
 *
 * Output: one "name: value" line per observation on stdout.  Never print
 * pids, inode or device numbers or current times; print relations instead.
 * errno values are printed as names (ENOENT).  Internal failures of the probe
 * itself go to stderr and exit 99 via die().
 */
#ifndef QRUN_PROBE_H
#define QRUN_PROBE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROBE_UNUSED __attribute__((unused))

static PROBE_UNUSED const char *probe_workdir = "";
static PROBE_UNUSED const char *probe_self = "";

static PROBE_UNUSED const char *errname(int e)
{
    switch (e) {
    case 0: return "OK";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case E2BIG: return "E2BIG";
    case ENOEXEC: return "ENOEXEC";
    case EBADF: return "EBADF";
    case ECHILD: return "ECHILD";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case EXDEV: return "EXDEV";
    case ENODEV: return "ENODEV";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ENFILE: return "ENFILE";
    case EMFILE: return "EMFILE";
    case ENOTTY: return "ENOTTY";
    case ETXTBSY: return "ETXTBSY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EROFS: return "EROFS";
    case EMLINK: return "EMLINK";
    case EPIPE: return "EPIPE";
    case ERANGE: return "ERANGE";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ENOSYS: return "ENOSYS";
    case ENOTEMPTY: return "ENOTEMPTY";
    case ENODATA: return "ENODATA";
    case ELOOP: return "ELOOP";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EOVERFLOW: return "EOVERFLOW";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "E#%d", e);
        return buf;
    }
    }
}

static PROBE_UNUSED const char *signame(int s)
{
    switch (s) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGCHLD: return "SIGCHLD";
    case SIGSTOP: return "SIGSTOP";
    case SIGSYS: return "SIGSYS";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "SIG#%d", s);
        return buf;
    }
    }
}

/* "name: value" */
static PROBE_UNUSED __attribute__((format(printf, 2, 3)))
void out(const char *name, const char *fmt, ...)
{
    va_list ap;
    printf("%s: ", name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

/* Print the outcome of a call returning -1/errno on failure:
 * "name: ok" or "name: ENOENT".  Returns rc unchanged. */
static PROBE_UNUSED long res(const char *name, long rc)
{
    if (rc == -1)
        out(name, "%s", errname(errno));
    else
        out(name, "ok");
    return rc;
}

/* Like res() but prints the value on success: "name: 3" / "name: EBADF". */
static PROBE_UNUSED long val(const char *name, long rc)
{
    if (rc == -1)
        out(name, "%s", errname(errno));
    else
        out(name, "%ld", rc);
    return rc;
}

static PROBE_UNUSED const char *yesno(int cond) { return cond ? "yes" : "no"; }

static PROBE_UNUSED __attribute__((noreturn, format(printf, 1, 2)))
void die(const char *fmt, ...)
{
    va_list ap;
    int e = errno;
    fflush(stdout);
    fprintf(stderr, "PROBE INTERNAL FAILURE: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (errno %s)\n", errname(e));
    exit(99);
}

static PROBE_UNUSED const char *ftype(mode_t m)
{
    switch (m & S_IFMT) {
    case S_IFREG: return "reg";
    case S_IFDIR: return "dir";
    case S_IFLNK: return "lnk";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "sock";
    case S_IFCHR: return "chr";
    case S_IFBLK: return "blk";
    default: return "unknown";
    }
}

/* Describe a wait status canonically: "exit 3" / "signal SIGTERM". */
static PROBE_UNUSED const char *wstatus(int st)
{
    static char buf[64];
    if (WIFEXITED(st))
        snprintf(buf, sizeof buf, "exit %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, sizeof buf, "signal %s", signame(WTERMSIG(st)));
    else
        snprintf(buf, sizeof buf, "other 0x%x", (unsigned)st);
    return buf;
}

/* Write a whole string to a new file (mode 0644 before umask). */
static PROBE_UNUSED void put_file(const char *path, const char *content)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("put_file open %s", path);
    size_t n = strlen(content);
    if (write(fd, content, n) != (ssize_t)n)
        die("put_file write %s", path);
    if (close(fd) != 0)
        die("put_file close %s", path);
}

/* Read up to cap-1 bytes of a file into buf (NUL-terminated); -1 on error. */
static PROBE_UNUSED ssize_t get_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    size_t got = 0;
    while (got < cap - 1) {
        ssize_t r = read(fd, buf + got, cap - 1 - got);
        if (r < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    buf[got] = '\0';
    close(fd);
    return (ssize_t)got;
}

/* Print a buffer as an escaped string so that any byte is visible. */
static PROBE_UNUSED void out_bytes(const char *name, const char *buf, ssize_t n)
{
    printf("%s: \"", name);
    for (ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\\' || c == '"')
            printf("\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
    fputs("\"\n", stdout);
}

/* "name[<n>]: \"<escaped bytes>\"" on success, "name: ERRNO" on failure. */
static PROBE_UNUSED void out_read(const char *name, ssize_t n, const char *buf)
{
    if (n < 0) {
        out(name, "%s", errname(errno));
        return;
    }
    char label[128];
    snprintf(label, sizeof label, "%s[%zd]", name, n);
    out_bytes(label, buf, n);
}

/* Common start: line-buffered stdout, record WORKDIR and SELF. */
static PROBE_UNUSED void probe_init(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        die("usage: %s WORKDIR [SELF]", argv[0]);
    probe_workdir = argv[1];
    if (argc >= 3)
        probe_self = argv[2];
}

/* Flush stdio before fork so buffered output is never duplicated. */
static PROBE_UNUSED pid_t probe_fork(void)
{
    fflush(stdout);
    fflush(stderr);
    return fork();
}

/* Read exactly n bytes from a pipe (child -> parent reports). */
static PROBE_UNUSED int read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

#endif
