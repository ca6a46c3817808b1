/* misc: the less common forwarded fd and path calls: xattrs, fallocate, flock,
 * readahead/fadvise, sync calls, preadv2/pwritev2, close_range, the fd-to-fd copy
 * calls, execveat, mknodat, statfs, and signals addressed by tid and by pidfd. */
#include "probe.h"
#include <sys/file.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <sys/xattr.h>

int main(int argc, char **argv)
{
    probe_init(argc, argv);
    umask(022);
    if (argc > 3 && strcmp(argv[3], "execveat-child") == 0) {
        out("execveat.child", "running");
        return 9;
    }
    put_file("f", "0123456789abcdef");

    /* xattrs (user.* may be unsupported on the home file system: then both runs agree) */
    res("setxattr", setxattr("f", "user.qrun", "v1", 2, 0));
    char xb[64] = { 0 };
    val("getxattr", getxattr("f", "user.qrun", xb, sizeof xb));
    val("lgetxattr", lgetxattr("f", "user.qrun", xb, sizeof xb));
    val("listxattr.size", listxattr("f", NULL, 0));
    res("lsetxattr", lsetxattr("f", "user.other", "v2", 2, 0));
    val("llistxattr.size", llistxattr("f", NULL, 0));
    res("removexattr", removexattr("f", "user.other"));
    res("lremovexattr.missing", lremovexattr("f", "user.other"));
    int fd = open("f", O_RDWR);
    res("fsetxattr", fsetxattr(fd, "user.fd", "v3", 2, 0));
    val("fgetxattr", fgetxattr(fd, "user.fd", xb, sizeof xb));
    val("flistxattr.size", flistxattr(fd, NULL, 0));
    res("fremovexattr", fremovexattr(fd, "user.fd"));

    /* space and sync calls */
    res("fallocate", fallocate(fd, 0, 0, 64));
    struct stat s;
    fstat(fd, &s);
    out("fallocate.size", "%lld", (long long)s.st_size);
    res("posix_fadvise", posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL) == 0 ? 0 : -1);
    res("readahead", readahead(fd, 0, 16));
    res("sync_file_range", sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE));
    res("syncfs", syncfs(fd));
    res("flock.ex", flock(fd, LOCK_EX | LOCK_NB));
    int fd2 = open("f", O_RDONLY);
    res("flock.other_fd", flock(fd2, LOCK_EX | LOCK_NB));
    res("flock.un", flock(fd, LOCK_UN));
    res("flock.other_fd_after_unlock", flock(fd2, LOCK_SH | LOCK_NB));
    struct statfs sf;
    res("statfs", statfs("f", &sf));
    res("fstatfs", fstatfs(fd, &sf));

    /* preadv2 / pwritev2 with explicit offsets and no flags */
    char a[4] = { 0 }, b[4] = { 0 };
    struct iovec iv[2] = { { a, 3 }, { b, 3 } };
    val("preadv2", preadv2(fd2, iv, 2, 4, 0));
    out("preadv2.data", "%.3s|%.3s", a, b);
    struct iovec ov[2] = { { "XY", 2 }, { "Z", 1 } };
    val("pwritev2", pwritev2(fd, ov, 2, 1, 0));
    char all[80] = { 0 };
    val("pread.after", pread(fd, all, 16, 0));
    out("pread.after.data", "%.16s", all);

    /* copies between fds: the runtime may refuse fd-to-fd copies involving a home file;
     * callers fall back to read/write, so print what the caller ends up with */
    int out_fd = open("copy", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    loff_t off_in = 0;
    ssize_t n = copy_file_range(fd2, &off_in, out_fd, NULL, 16, 0);
    if (n < 0) {
        n = pread(fd2, all, 16, 0);
        n = write(out_fd, all, (size_t)n);
    }
    out("copy_file_range.copied", "%zd", n);
    off_t so = 0;
    n = sendfile(out_fd, fd2, &so, 4);
    if (n < 0)
        n = write(out_fd, "0123", 4);
    out("sendfile.copied", "%zd", n);
    close(out_fd);
    int pp[2];
    if (pipe(pp) == 0) {
        loff_t so2 = 0;
        n = splice(fd2, &so2, pp[1], NULL, 8, 0);
        if (n < 0)
            n = write(pp[1], "01234567", 8);
        out("splice.moved", "%zd", n);
        close(pp[0]);
        close(pp[1]);
    }
    val("copy.size", get_file("copy", all, sizeof all));

    /* set-id calls that keep the current ids (the job keeps its identity) */
    uid_t u = getuid();
    gid_t g = getgid();
    res("setuid.same", setuid(u));
    res("setgid.same", setgid(g));
    res("setreuid.same", setreuid(u, (uid_t)-1));
    res("setregid.same", setregid(g, (gid_t)-1));
    res("setresuid.same", setresuid((uid_t)-1, u, (uid_t)-1));
    res("setresgid.same", setresgid((gid_t)-1, g, (gid_t)-1));
    gid_t groups[64];
    int ng = getgroups(64, groups);
    res("setgroups.same", ng >= 0 ? setgroups((size_t)ng, groups) : -1);

    /* close_range closes home fds too (and their numbers become free) */
    int hi = dup2(fd2, 40);
    res("close_range", (long)syscall(SYS_close_range, 40, 50, 0));
    val("fcntl.closed", fcntl(hi, F_GETFD));
    close(fd);
    close(fd2);

    /* mknodat */
    int dfd = open(".", O_RDONLY | O_DIRECTORY);
    res("mknodat.fifo", mknodat(dfd, "fifo", S_IFIFO | 0640, 0));
    struct stat fs;
    if (fstatat(dfd, "fifo", &fs, 0) == 0)
        out("mknodat.type", "%s %04o", ftype(fs.st_mode), (unsigned)(fs.st_mode & 07777));

    /* signals by tid and by pidfd, and a queued signal */
    pid_t c = probe_fork();
    if (c == 0) {
        pause();
        _exit(0);
    }
    usleep(20000);
    res("tkill", syscall(SYS_tkill, c, SIGUSR1));
    int st;
    waitpid(c, &st, 0);
    out("tkill.status", "%s", wstatus(st));
    c = probe_fork();
    if (c == 0) {
        pause();
        _exit(0);
    }
    usleep(20000);
    int pfd = (int)syscall(SYS_pidfd_open, c, 0);
    out("pidfd_open", "%s", pfd >= 0 ? "ok" : errname(errno));
    res("pidfd_send_signal", syscall(SYS_pidfd_send_signal, pfd, SIGTERM, NULL, 0));
    waitpid(c, &st, 0);
    out("pidfd.status", "%s", wstatus(st));
    close(pfd);
    c = probe_fork();
    if (c == 0) {
        pause();
        _exit(0);
    }
    usleep(20000);
    union sigval sv = { .sival_int = 7 };
    res("sigqueue", sigqueue(c, SIGUSR2, sv));
    waitpid(c, &st, 0);
    out("sigqueue.status", "%s", wstatus(st));

    /* execveat of a home binary through a directory fd */
    c = probe_fork();
    if (c == 0) {
        int dir = open(probe_self, O_PATH);
        char *args[] = { (char *)probe_self, (char *)probe_workdir, (char *)probe_self,
                         "execveat-child", NULL };
        syscall(SYS_execveat, dir, "", args, environ, AT_EMPTY_PATH);
        _exit(127);
    }
    fflush(stdout);
    waitpid(c, &st, 0);
    out("execveat.status", "%s", wstatus(st));
    return 0;
}
