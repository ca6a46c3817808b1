/* stat: stat/lstat/fstat/fstatat (AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH)/statx,
 * utimensat-set mtimes, access/faccessat/faccessat2. */
#include "probe.h"
#include <sys/time.h>

static void show_st(const char *name, int rc, const struct stat *st)
{
    if (rc != 0) {
        out(name, "%s", errname(errno));
        return;
    }
    out(name, "type=%s perm=%04o nlink=%lu size=%lld uid_is_me=%s gid_is_me=%s",
        ftype(st->st_mode), st->st_mode & 07777, (unsigned long)st->st_nlink,
        S_ISDIR(st->st_mode) ? -1LL : (long long)st->st_size,
        yesno(st->st_uid == geteuid()), yesno(st->st_gid == getegid()));
}

static void show_times(const char *name, const struct stat *st)
{
    out(name, "mtime=%lld.%09ld atime=%lld.%09ld",
        (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
        (long long)st->st_atim.tv_sec, st->st_atim.tv_nsec);
}

static void show_statx(const char *name, int rc, const struct statx *sx)
{
    if (rc != 0) {
        out(name, "%s", errname(errno));
        return;
    }
    out(name, "basic=%s type=%s perm=%04o nlink=%u size=%lld uid_is_me=%s",
        yesno((sx->stx_mask & STATX_BASIC_STATS) == STATX_BASIC_STATS),
        ftype(sx->stx_mode), sx->stx_mode & 07777, sx->stx_nlink,
        S_ISDIR(sx->stx_mode) ? -1LL : (long long)sx->stx_size,
        yesno(sx->stx_uid == geteuid()));
}

static long sys_faccessat2(int dirfd, const char *path, int mode, int flags)
{
    return syscall(SYS_faccessat2, dirfd, path, mode, flags);
}

int main(int argc, char **argv)
{
    struct stat st;
    struct statx sx;
    int rc;

    probe_init(argc, argv);

    if (umask(022) != 022)
        umask(022); /* fixed umask so modes below are the same everywhere */
    put_file("f644", "0123456789");
    if (chmod("f644", 0644) != 0)
        die("chmod f644");
    put_file("f755", "#!/bin/sh\nexit 0\n");
    if (chmod("f755", 0755) != 0)
        die("chmod f755");
    put_file("f000", "");
    if (chmod("f000", 0) != 0)
        die("chmod f000");
    if (mkdir("d", 0750) != 0)
        die("mkdir d");
    if (symlink("f644", "ln") != 0)
        die("symlink");
    if (symlink("missing-target", "dangling") != 0)
        die("symlink dangling");
    if (link("f644", "hard") != 0)
        die("link");

    /* stat vs lstat */
    rc = stat("f644", &st);
    show_st("stat.f644", rc, &st);
    rc = stat("f755", &st);
    show_st("stat.f755", rc, &st);
    rc = stat("f000", &st);
    show_st("stat.f000", rc, &st);
    rc = stat("d", &st);
    show_st("stat.dir", rc, &st);
    rc = stat("ln", &st);
    show_st("stat.symlink", rc, &st);
    rc = lstat("ln", &st);
    show_st("lstat.symlink", rc, &st);
    rc = stat("dangling", &st);
    show_st("stat.dangling", rc, &st);
    rc = lstat("dangling", &st);
    show_st("lstat.dangling", rc, &st);
    rc = stat("missing", &st);
    show_st("stat.missing", rc, &st);
    rc = stat("f644/x", &st);
    show_st("stat.notdir", rc, &st);
    rc = stat("", &st);
    show_st("stat.empty", rc, &st);
    rc = stat(".", &st);
    show_st("stat.dot", rc, &st);
    rc = lstat("d/", &st);
    show_st("lstat.dir_slash", rc, &st);
    rc = lstat("f644/", &st);
    show_st("lstat.file_slash", rc, &st);

    /* fstat */
    int fd = open("f644", O_RDONLY);
    if (fd < 0)
        die("open f644");
    rc = fstat(fd, &st);
    show_st("fstat.f644", rc, &st);
    rc = fstat(9999, &st);
    show_st("fstat.badfd", rc, &st);

    /* fstatat */
    int dfd = open(".", O_RDONLY | O_DIRECTORY);
    if (dfd < 0)
        die("open .");
    rc = fstatat(dfd, "ln", &st, 0);
    show_st("fstatat.follow", rc, &st);
    rc = fstatat(dfd, "ln", &st, AT_SYMLINK_NOFOLLOW);
    show_st("fstatat.nofollow", rc, &st);
    rc = fstatat(fd, "", &st, AT_EMPTY_PATH);
    show_st("fstatat.empty_path_fd", rc, &st);
    rc = fstatat(dfd, "", &st, AT_EMPTY_PATH);
    show_st("fstatat.empty_path_dirfd", rc, &st);
    rc = fstatat(AT_FDCWD, "hard", &st, 0);
    show_st("fstatat.cwd_hardlink", rc, &st);
    rc = fstatat(fd, "x", &st, 0);
    show_st("fstatat.file_as_dirfd", rc, &st);
    rc = fstatat(dfd, "f644", &st, 0x40000000);
    show_st("fstatat.bad_flag", rc, &st);

    /* statx */
    rc = statx(AT_FDCWD, "f644", 0, STATX_BASIC_STATS, &sx);
    show_statx("statx.f644", rc, &sx);
    rc = statx(dfd, "ln", AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &sx);
    show_statx("statx.symlink_nofollow", rc, &sx);
    rc = statx(dfd, "ln", 0, STATX_BASIC_STATS, &sx);
    show_statx("statx.symlink_follow", rc, &sx);
    rc = statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx);
    show_statx("statx.empty_path", rc, &sx);
    rc = statx(AT_FDCWD, "d", 0, STATX_TYPE | STATX_MODE, &sx);
    show_statx("statx.dir", rc, &sx);
    rc = statx(AT_FDCWD, "missing", 0, STATX_BASIC_STATS, &sx);
    show_statx("statx.missing", rc, &sx);
    close(fd);

    /* times set by the probe itself */
    struct timespec ts[2] = {
        {.tv_sec = 1000000000, .tv_nsec = 111111111}, /* atime */
        {.tv_sec = 1234567890, .tv_nsec = 123456789}, /* mtime */
    };
    res("utimensat.f644", utimensat(AT_FDCWD, "f644", ts, 0));
    rc = stat("f644", &st);
    if (rc == 0)
        show_times("times.f644", &st);
    rc = statx(AT_FDCWD, "f644", 0, STATX_MTIME, &sx);
    if (rc == 0)
        out("statx.times.f644", "mtime=%lld.%09u", (long long)sx.stx_mtime.tv_sec,
            sx.stx_mtime.tv_nsec);
    struct timespec ts2[2] = {
        {.tv_sec = 0, .tv_nsec = UTIME_OMIT},
        {.tv_sec = 86400, .tv_nsec = 5},
    };
    res("utimensat.omit_atime", utimensat(AT_FDCWD, "f644", ts2, 0));
    rc = stat("f644", &st);
    if (rc == 0)
        show_times("times.f644_omit", &st);
    struct timespec ts3[2] = {
        {.tv_sec = 42, .tv_nsec = 0},
        {.tv_sec = 43, .tv_nsec = 999999999},
    };
    res("utimensat.symlink_nofollow", utimensat(AT_FDCWD, "ln", ts3, AT_SYMLINK_NOFOLLOW));
    rc = lstat("ln", &st);
    if (rc == 0)
        show_times("times.symlink_itself", &st);
    rc = stat("ln", &st);
    if (rc == 0)
        show_times("times.symlink_target_unchanged", &st);
    struct timespec bad[2] = {{.tv_sec = 0, .tv_nsec = 1000000000}, {.tv_sec = 0, .tv_nsec = 0}};
    res("utimensat.bad_nsec", utimensat(AT_FDCWD, "f644", bad, 0));
    res("utimensat.missing", utimensat(AT_FDCWD, "missing", ts, 0));

    /* access family (running as root makes EACCES tests meaningless) */
    static const struct { const char *name; int mode; } modes[] = {
        {"F_OK", F_OK}, {"R_OK", R_OK}, {"W_OK", W_OK}, {"X_OK", X_OK},
    };
    static const char *files[] = {"f644", "f755", "d", "missing"};
    for (unsigned i = 0; i < sizeof files / sizeof files[0]; i++) {
        for (unsigned j = 0; j < sizeof modes / sizeof modes[0]; j++) {
            char name[96];
            snprintf(name, sizeof name, "access.%s.%s", files[i], modes[j].name);
            res(name, access(files[i], modes[j].mode));
            snprintf(name, sizeof name, "faccessat.%s.%s", files[i], modes[j].name);
            res(name, faccessat(dfd, files[i], modes[j].mode, 0));
            snprintf(name, sizeof name, "faccessat2.%s.%s", files[i], modes[j].name);
            res(name, sys_faccessat2(dfd, files[i], modes[j].mode, AT_EACCESS));
        }
    }
    res("faccessat2.dangling_nofollow", sys_faccessat2(dfd, "dangling", F_OK, AT_SYMLINK_NOFOLLOW));
    res("faccessat2.dangling_follow", sys_faccessat2(dfd, "dangling", F_OK, 0));
    res("faccessat2.bad_flag", sys_faccessat2(dfd, "f644", F_OK, 0x1));
    res("access.bad_mode", access("f644", 0x100));
    close(dfd);

    /* Absolute paths, asked three times each: the later answers may come from a cache
     * (under qrun, the tracer's C loop), and must be what the first one was. readlink's
     * buffer bounds its answer: 1, 3 and 4 bytes cut "f644", 64 hold it. */
    char cwd[4096], abs_ln[4200], abs_f[4200], abs_missing[4200];
    if (!getcwd(cwd, sizeof cwd))
        die("getcwd: %s", strerror(errno));
    snprintf(abs_ln, sizeof abs_ln, "%s/ln", cwd);
    snprintf(abs_f, sizeof abs_f, "%s/f644", cwd);
    snprintf(abs_missing, sizeof abs_missing, "%s/missing", cwd);
    for (int round = 0; round < 3; round++) {
        static const size_t sizes[] = {1, 3, 4, 64};
        for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            char buf[64], name[64];
            memset(buf, '#', sizeof buf);
            ssize_t n = readlink(abs_ln, buf, sizes[i]);
            snprintf(name, sizeof name, "abs.readlink.size%zu.round%d", sizes[i], round);
            if (n < 0)
                out(name, "%s", errname(errno));
            else
                out(name, "%zd %.*s next=%c", n, (int)n, buf, buf[n]);
        }
        char name[64];
        snprintf(name, sizeof name, "abs.readlink.not_a_link.round%d", round);
        char buf[64];
        res(name, readlink(abs_f, buf, sizeof buf));
        snprintf(name, sizeof name, "abs.lstat.ln.round%d", round);
        rc = lstat(abs_ln, &st);
        if (rc == 0)
            out(name, "%s size=%lld", ftype(st.st_mode), (long long)st.st_size);
        else
            out(name, "%s", errname(errno));
        snprintf(name, sizeof name, "abs.stat.missing.round%d", round);
        res(name, stat(abs_missing, &st));
        snprintf(name, sizeof name, "abs.access.f644.W_OK.round%d", round);
        res(name, access(abs_f, W_OK));
    }
    return 0;
}
