/* meta: chmod/fchmod/fchmodat, chown family to own uid/gid, utimensat/futimens,
 * truncate/ftruncate, fsync/fdatasync, statfs/fstatfs, umask. */
#include "probe.h"
#include <sys/statfs.h>

static void show_perm(const char *label, const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        out(label, "%s", errname(errno));
    else
        out(label, "%s %04o", ftype(st.st_mode), st.st_mode & 07777);
}

static void show_owner(const char *label, const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        out(label, "%s", errname(errno));
    else
        out(label, "uid=%u gid=%u uid_is_euid=%s gid_is_egid=%s", (unsigned)st.st_uid,
            (unsigned)st.st_gid, yesno(st.st_uid == geteuid()), yesno(st.st_gid == getegid()));
}

static void show_size_zeros(const char *label, const char *path)
{
    char buf[8192];
    ssize_t n = get_file(path, buf, sizeof buf);
    if (n < 0) {
        out(label, "%s", errname(errno));
        return;
    }
    int zeros = 0;
    for (ssize_t i = 0; i < n; i++)
        zeros += buf[i] == 0;
    char head[9];
    ssize_t h = n < 8 ? n : 8;
    for (ssize_t i = 0; i < h; i++)
        head[i] = buf[i] ? buf[i] : '0';
    head[h] = '\0';
    out(label, "size=%zd zero_bytes=%d head=%s", n, zeros, head);
}

int main(int argc, char **argv)
{
    probe_init(argc, argv);

    /* umask: print the inherited one, then set 027 and observe */
    mode_t initial = umask(027);
    out("umask.initial", "%04o", (unsigned)initial);
    mode_t prev = umask(027);
    out("umask.returned_previous", "%04o", (unsigned)prev);
    put_file("um_file", "");
    int ufd = open("um_file2", O_WRONLY | O_CREAT | O_EXCL, 0777);
    close(ufd);
    res("mkdir.um_dir", mkdir("um_dir", 0777));
    res("mkfifo.um_fifo", mkfifo("um_fifo", 0666));
    show_perm("umask027.file_0644", "um_file");
    show_perm("umask027.file_0777", "um_file2");
    show_perm("umask027.dir_0777", "um_dir");
    show_perm("umask027.fifo_0666", "um_fifo");
    umask(0);
    put_file("um0_file", "");
    res("mkdir.um0_dir", mkdir("um0_dir", 01777));
    show_perm("umask0.file_0644", "um0_file");
    show_perm("umask0.dir_01777", "um0_dir");
    umask(022);

    /* chmod family */
    put_file("f", "0123456789");
    res("chmod.0600", chmod("f", 0600));
    show_perm("perm.after_chmod", "f");
    res("chmod.setuid_sticky", chmod("f", 04755 | 01000));
    show_perm("perm.after_chmod_special", "f");
    int fd = open("f", O_RDWR);
    if (fd < 0)
        die("open f");
    res("fchmod.0640", fchmod(fd, 0640));
    show_perm("perm.after_fchmod", "f");
    res("fchmodat.0604", fchmodat(AT_FDCWD, "f", 0604, 0));
    show_perm("perm.after_fchmodat", "f");
    res("symlink.l", symlink("f", "l"));
    res("chmod.via_symlink", chmod("l", 0611));
    show_perm("perm.target_via_symlink", "f");
    show_perm("perm.symlink_itself", "l");
    res("fchmodat.symlink_nofollow", fchmodat(AT_FDCWD, "l", 0600, AT_SYMLINK_NOFOLLOW));
    res("chmod.missing", chmod("missing", 0644));
    res("fchmod.badfd", fchmod(9999, 0644));
    res("chmod.restore", chmod("f", 0644));

    /* chown family to the current ids (no-ops that must succeed) */
    uid_t u = geteuid();
    gid_t g = getegid();
    res("chown.self", chown("f", u, g));
    res("fchown.self", fchown(fd, u, g));
    res("lchown.self", lchown("l", u, g));
    res("fchownat.self", fchownat(AT_FDCWD, "f", u, g, 0));
    res("fchownat.nofollow", fchownat(AT_FDCWD, "l", u, g, AT_SYMLINK_NOFOLLOW));
    res("fchownat.empty_path", fchownat(fd, "", u, g, AT_EMPTY_PATH));
    res("chown.minus1", chown("f", (uid_t)-1, (gid_t)-1));
    res("chown.missing", chown("missing", u, g));
    show_owner("owner.f", "f");
    show_owner("owner.l", "l");
    res("chmod.setgid_before_chown", chmod("f", 02755));
    res("chown.self_again", chown("f", u, g));
    show_perm("perm.after_chown_of_setgid", "f");
    res("chmod.restore2", chmod("f", 0644));

    /* utimensat / futimens with explicit timespecs */
    struct timespec ts[2] = {{.tv_sec = 1500000000, .tv_nsec = 1}, {.tv_sec = 1600000000, .tv_nsec = 2}};
    res("futimens", futimens(fd, ts));
    struct stat st;
    if (fstat(fd, &st) == 0)
        out("times.after_futimens", "atime=%lld.%09ld mtime=%lld.%09ld",
            (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec,
            (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    struct timespec ts2[2] = {{.tv_sec = 7, .tv_nsec = UTIME_OMIT}, {.tv_sec = 1700000000, .tv_nsec = 3}};
    res("utimensat.omit", utimensat(AT_FDCWD, "f", ts2, 0));
    if (stat("f", &st) == 0)
        out("times.after_utimensat", "atime=%lld.%09ld mtime=%lld.%09ld",
            (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec,
            (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    struct timespec now[2] = {{.tv_sec = 0, .tv_nsec = UTIME_NOW}, {.tv_sec = 0, .tv_nsec = UTIME_NOW}};
    res("futimens.now", futimens(fd, now));
    if (fstat(fd, &st) == 0)
        out("times.now_is_recent", "%s", yesno(st.st_mtim.tv_sec > 1700000000));

    /* truncate / ftruncate: grow, read back zeros, shrink */
    res("ftruncate.grow_100", ftruncate(fd, 100));
    show_size_zeros("content.after_grow", "f");
    res("truncate.shrink_4", truncate("f", 4));
    show_size_zeros("content.after_shrink", "f");
    res("truncate.grow_4096", truncate("f", 4096));
    show_size_zeros("content.after_grow_4096", "f");
    res("ftruncate.zero", ftruncate(fd, 0));
    show_size_zeros("content.after_zero", "f");
    res("ftruncate.negative", ftruncate(fd, -1));
    res("truncate.missing", truncate("missing", 0));
    res("truncate.dir", truncate(".", 0));
    int ro = open("f", O_RDONLY);
    res("ftruncate.rdonly_fd", ftruncate(ro, 10));
    close(ro);
    val("lseek.offset_unaffected_by_truncate", lseek(fd, 0, SEEK_CUR));

    /* fsync / fdatasync */
    if (write(fd, "sync me", 7) != 7)
        die("write");
    res("fsync", fsync(fd));
    res("fdatasync", fdatasync(fd));
    int dfd = open(".", O_RDONLY | O_DIRECTORY);
    res("fsync.dir", fsync(dfd));
    res("fsync.badfd", fsync(9999));
    int p[2];
    if (pipe(p) != 0)
        die("pipe");
    res("fsync.pipe", fsync(p[0]));
    close(p[0]);
    close(p[1]);

    /* statfs / fstatfs: only success and f_bsize>0 (values differ by FS) */
    struct statfs sfs;
    int rc = statfs(".", &sfs);
    out("statfs.workdir", "%s bsize_positive=%s", rc == 0 ? "ok" : errname(errno),
        yesno(rc == 0 && sfs.f_bsize > 0));
    rc = fstatfs(fd, &sfs);
    out("fstatfs.file", "%s bsize_positive=%s", rc == 0 ? "ok" : errname(errno),
        yesno(rc == 0 && sfs.f_bsize > 0));
    rc = statfs("missing", &sfs);
    out("statfs.missing", "%s", rc == 0 ? "ok" : errname(errno));
    rc = fstatfs(9999, &sfs);
    out("fstatfs.badfd", "%s", rc == 0 ? "ok" : errname(errno));

    close(dfd);
    close(fd);
    umask(initial);
    out("umask.restored", "%04o", (unsigned)umask(initial));
    return 0;
}
