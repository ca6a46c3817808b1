/* legacy: the x86_64 path calls glibc no longer makes (it uses the *at forms), made
 * directly with syscall(2), so each is exercised natively and under qrun. On other
 * architectures these calls do not exist and the probe prints only "arch: other". */
#include "probe.h"
#include <sys/syscall.h>
#include <utime.h>
#include <sys/time.h>

#ifdef SYS_stat
static void st(const char *name, long nr, const char *path)
{
    struct stat s;
    long rc = syscall(nr, path, &s);
    if (rc == -1)
        out(name, "%s", errname(errno));
    else
        out(name, "%s %04o size=%lld nlink=%ld", ftype(s.st_mode), (unsigned)(s.st_mode & 07777),
            (long long)s.st_size, (long)s.st_nlink);
}
#endif

int main(int argc, char **argv)
{
    probe_init(argc, argv);
    umask(022);
#ifndef SYS_stat
    out("arch", "other");
    return 0;
#else
    out("arch", "x86_64");
    long fd = val("open.creat", syscall(SYS_open, "a", O_WRONLY | O_CREAT | O_TRUNC, 0640));
    if (fd >= 0) {
        val("write", write((int)fd, "hello\n", 6));
        close((int)fd);
    }
    fd = val("creat", syscall(SYS_creat, "b", 0600));
    if (fd >= 0)
        close((int)fd);
    val("open.missing", syscall(SYS_open, "missing", O_RDONLY));
    st("stat.a", SYS_stat, "a");
    st("stat.trailing_slash", SYS_stat, "a/");
    res("access.R", syscall(SYS_access, "a", R_OK));
    res("faccessat.W", syscall(SYS_faccessat, AT_FDCWD, "a", W_OK));
    res("faccessat.missing", syscall(SYS_faccessat, AT_FDCWD, "missing", F_OK));
    long sfd = open("a", O_RDONLY);
    struct stat fst;
    res("fstat.raw", syscall(SYS_fstat, sfd, &fst));
    out("fstat.raw.size", "%lld", (long long)fst.st_size);
    close((int)sfd);
    /* fchmodat2 (Linux 6.6): AT_SYMLINK_NOFOLLOW on a regular file is allowed */
    res("fchmodat2", syscall(452, AT_FDCWD, "a", 0640, AT_SYMLINK_NOFOLLOW));
    res("access.X", syscall(SYS_access, "a", X_OK));
    res("mkdir", syscall(SYS_mkdir, "d", 0750));
    res("mkdir.again", syscall(SYS_mkdir, "d", 0750));
    st("stat.d", SYS_stat, "d");
    res("symlink", syscall(SYS_symlink, "a", "ln"));
    st("lstat.ln", SYS_lstat, "ln");
    st("stat.ln", SYS_stat, "ln");
    char buf[64] = { 0 };
    long n = val("readlink", syscall(SYS_readlink, "ln", buf, sizeof buf));
    if (n > 0)
        out("readlink.target", "%.*s", (int)n, buf);
    res("link", syscall(SYS_link, "a", "hard"));
    st("stat.hard", SYS_stat, "hard");
    res("rename", syscall(SYS_rename, "hard", "d/moved"));
    st("stat.moved", SYS_stat, "d/moved");
    res("chmod", syscall(SYS_chmod, "a", 0604));
    st("stat.chmod", SYS_stat, "a");
    res("chown", syscall(SYS_chown, "a", getuid(), getgid()));
    res("lchown", syscall(SYS_lchown, "ln", getuid(), getgid()));
    struct utimbuf ub = { .actime = 1000000000, .modtime = 1200000000 };
    res("utime", syscall(SYS_utime, "a", &ub));
    struct stat s;
    if (stat("a", &s) == 0)
        out("utime.mtime", "%lld", (long long)s.st_mtime);
    struct timeval tv[2] = { { 1000000000, 0 }, { 1300000000, 500000 } };
    res("utimes", syscall(SYS_utimes, "b", tv));
    if (stat("b", &s) == 0)
        out("utimes.mtime", "%lld.%09ld", (long long)s.st_mtime, s.st_mtim.tv_nsec);
    tv[1].tv_sec = 1400000000;
    res("futimesat", syscall(SYS_futimesat, AT_FDCWD, "b", tv));
    if (stat("b", &s) == 0)
        out("futimesat.mtime", "%lld", (long long)s.st_mtime);
    res("mknod.fifo", syscall(SYS_mknod, "fifo", S_IFIFO | 0600, 0));
    st("stat.fifo", SYS_stat, "fifo");
    res("unlink.fifo", syscall(SYS_unlink, "fifo"));
    res("unlink.ln", syscall(SYS_unlink, "ln"));
    res("unlink.dir", syscall(SYS_unlink, "d"));
    res("rmdir.nonempty", syscall(SYS_rmdir, "d"));
    res("unlink.moved", syscall(SYS_unlink, "d/moved"));
    res("rmdir", syscall(SYS_rmdir, "d"));

    /* getdents (the old layout): count entries of "." */
    int dfd = open(".", O_RDONLY | O_DIRECTORY);
    char dents[4096];
    long total = 0, got;
    while ((got = syscall(SYS_getdents, dfd, dents, sizeof dents)) > 0) {
        for (long off = 0; off < got;) {
            unsigned short reclen = *(unsigned short *)(dents + off + 16);
            total++;
            off += reclen;
        }
    }
    out("getdents.entries", "%ld", total);
    close(dfd);

    /* fork, vfork and getpgrp as raw calls */
    int p[2];
    if (pipe(p) != 0)
        die("pipe");
    long c = syscall(SYS_fork);
    if (c == 0) {
        pid_t me = getpid();
        if (write(p[1], &me, sizeof me) != sizeof me)
            _exit(1);
        _exit(5);
    }
    pid_t child;
    read_full(p[0], &child, sizeof child);
    int status;
    out("fork.ret_is_child_pid", "%s", yesno(c == child));
    out("fork.wait", "%s", yesno(waitpid((pid_t)c, &status, 0) == c));
    out("fork.status", "%s", wstatus(status));
    c = vfork(); /* glibc makes the vfork syscall itself */
    if (c == 0)
        _exit(6);
    out("vfork.wait", "%s", yesno(waitpid((pid_t)c, &status, 0) == c));
    out("vfork.status", "%s", wstatus(status));
    out("getpgrp.matches_getpgid", "%s", yesno(syscall(SYS_getpgrp) == getpgid(0)));
    return 0;
#endif
}
