/* errors: errno values of failing file syscalls, ENOENT EEXIST ENOTDIR EISDIR
 * EBADF ENOTEMPTY ELOOP ENAMETOOLONG EINVAL ESPIPE EFAULT EPERM ... */
#include "probe.h"
#include <limits.h>
#include <sys/uio.h>

int main(int argc, char **argv)
{
    char buf[64];
    probe_init(argc, argv);
    umask(022);

    put_file("file", "content\n");
    if (mkdir("dir", 0755) != 0 || mkdir("full", 0755) != 0)
        die("mkdir");
    put_file("full/x", "x");
    if (symlink("loop1", "loop2") != 0 || symlink("loop2", "loop1") != 0 ||
        symlink("self", "self") != 0 || symlink("file", "tofile") != 0)
        die("symlink");

    /* ENOENT */
    val("ENOENT.open", open("missing", O_RDONLY));
    val("ENOENT.open_in_missing_dir", open("nodir/file", O_RDONLY | O_CREAT, 0644));
    val("ENOENT.empty_path", open("", O_RDONLY));
    val("ENOENT.unlink", unlink("missing"));
    val("ENOENT.rmdir", rmdir("missing"));
    val("ENOENT.stat", ({ struct stat s; stat("missing", &s); }));
    val("ENOENT.mkdir_parent", mkdir("missing/sub", 0755));

    /* EEXIST */
    val("EEXIST.open_excl", open("file", O_CREAT | O_EXCL | O_WRONLY, 0644));
    val("EEXIST.open_excl_dir", open("dir", O_CREAT | O_EXCL | O_RDONLY, 0644));
    val("EEXIST.open_excl_symlink", open("tofile", O_CREAT | O_EXCL | O_WRONLY, 0644));
    val("EEXIST.mkdir", mkdir("dir", 0755));
    val("EEXIST.mkdir_file", mkdir("file", 0755));
    val("EEXIST.link", link("file", "tofile"));
    val("EEXIST.symlink", symlink("x", "file"));

    /* ENOTDIR */
    val("ENOTDIR.open_under_file", open("file/x", O_RDONLY));
    val("ENOTDIR.o_directory_on_file", open("file", O_RDONLY | O_DIRECTORY));
    val("ENOTDIR.rmdir_file", rmdir("file"));
    val("ENOTDIR.mkdir_under_file", mkdir("file/sub", 0755));
    val("ENOTDIR.chdir_file", chdir("file"));
    val("ENOTDIR.trailing_slash", open("file/", O_RDONLY));
    int ffd = open("file", O_RDONLY);
    val("ENOTDIR.openat_file_dirfd", openat(ffd, "x", O_RDONLY));
    close(ffd);

    /* EISDIR */
    val("EISDIR.open_dir_wronly", open("dir", O_WRONLY));
    val("EISDIR.open_dir_rdwr", open("dir", O_RDWR));
    val("EISDIR.open_dir_creat", open("dir", O_CREAT | O_WRONLY, 0644));
    val("EISDIR.unlink_dir", unlink("dir"));
    int dfd = open("dir", O_RDONLY);
    val("EISDIR.read_dir_fd", read(dfd, buf, sizeof buf));
    close(dfd);
    val("EISDIR.rename_file_over_dir", rename("file", "dir"));

    /* EBADF */
    int fd = open("file", O_RDONLY);
    close(fd);
    val("EBADF.read_closed", read(fd, buf, 1));
    val("EBADF.write_closed", write(fd, "x", 1));
    val("EBADF.close_closed", close(fd));
    val("EBADF.lseek_closed", lseek(fd, 0, SEEK_SET));
    val("EBADF.negative_fd", read(-1, buf, 1));
    val("EBADF.huge_fd", read(1 << 20, buf, 1));
    fd = open("file", O_RDONLY);
    val("EBADF.write_rdonly", write(fd, "x", 1));
    val("EBADF.pwrite_rdonly", pwrite(fd, "x", 1, 0));
    struct iovec iov = {.iov_base = "x", .iov_len = 1};
    val("EBADF.writev_rdonly", writev(fd, &iov, 1));
    val("EBADF.ftruncate_rdonly_is_EINVAL", ftruncate(fd, 0));
    close(fd);
    fd = open("file", O_WRONLY);
    val("EBADF.read_wronly", read(fd, buf, 1));
    val("EBADF.pread_wronly", pread(fd, buf, 1, 0));
    close(fd);
    val("EBADF.openat_bad_dirfd", openat(9999, "file", O_RDONLY));
    val("EBADF.openat_abs_ignores_bad_dirfd", ({
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/file", probe_workdir);
        int r = openat(9999, p, O_RDONLY);
        if (r >= 0) close(r);
        r >= 0 ? 0 : -1;
    }));
    val("EBADF.fstat_bad", ({ struct stat s; fstat(9999, &s); }));

    /* ENOTEMPTY */
    val("ENOTEMPTY.rmdir", rmdir("full"));
    val("ENOTEMPTY.rename_over_nonempty", rename("dir", "full"));

    /* ELOOP */
    val("ELOOP.open_loop", open("loop1", O_RDONLY));
    val("ELOOP.open_self", open("self", O_RDONLY));
    val("ELOOP.stat_loop", ({ struct stat s; stat("loop1", &s); }));
    val("ELOOP.lstat_loop_ok", ({ struct stat s; lstat("loop1", &s); }));
    val("ELOOP.o_nofollow_symlink", open("tofile", O_RDONLY | O_NOFOLLOW));
    val("ELOOP.creat_through_loop", open("loop1", O_WRONLY | O_CREAT, 0644));

    /* ENAMETOOLONG */
    char longname[300];
    memset(longname, 'n', 256);
    longname[256] = '\0';
    val("ENAMETOOLONG.component_256", open(longname, O_RDONLY));
    longname[255] = '\0';
    val("ENOENT.component_255", open(longname, O_RDONLY));
    val("ENAMETOOLONG.mkdir_256", ({ longname[255] = 'n'; mkdir(longname, 0755); }));
    static char longpath[PATH_MAX + 100];
    size_t pos = 0;
    while (pos < PATH_MAX + 10) {
        memcpy(longpath + pos, "abcdefg/", 8);
        pos += 8;
    }
    longpath[pos] = '\0';
    val("ENAMETOOLONG.path_over_PATH_MAX", open(longpath, O_RDONLY));
    val("ENAMETOOLONG.stat_path", ({ struct stat s; stat(longpath, &s); }));

    /* EINVAL */
    fd = open("file", O_RDONLY);
    val("EINVAL.lseek_whence_99", lseek(fd, 0, 99));
    val("EINVAL.lseek_negative", lseek(fd, -100, SEEK_SET));
    val("EINVAL.o_tmpfile_rdonly", open("file", O_RDONLY | O_TMPFILE, 0644));
    val("EINVAL.rename_into_self", rename("dir", "dir/sub"));
    val("EINVAL.rmdir_dot", rmdir("."));
    val("EINVAL.readlink_not_link", readlink("file", buf, sizeof buf));
    val("EINVAL.faccessat_bad_flags", faccessat(AT_FDCWD, "file", F_OK, 0x7000));
    val("EINVAL.linkat_bad_flags", linkat(AT_FDCWD, "file", AT_FDCWD, "l2", 0x7000));

    /* ESPIPE, EPERM, EFAULT, EXDEV-free misc */
    int p[2];
    if (pipe(p) != 0)
        die("pipe");
    val("ESPIPE.lseek_pipe", lseek(p[0], 0, SEEK_SET));
    val("ESPIPE.pread_pipe", pread(p[0], buf, 1, 0));
    close(p[0]);
    val("EPIPE.write_closed_pipe", ({ signal(SIGPIPE, SIG_IGN); write(p[1], "x", 1); }));
    close(p[1]);
    val("EPERM.link_dir", link("dir", "dirlink"));
    /* an unmapped address the compiler cannot see through */
    void *volatile bad = (void *)1;
    val("EFAULT.open_bad_pointer", open((const char *)bad, O_RDONLY));
    val("EFAULT.read_into_bad_pointer", read(fd, bad, 4));
    val("EFAULT.stat_bad_buffer", stat("file", (struct stat *)bad));
    val("EFAULT.write_from_bad_pointer", ({
        int w = open("efault-out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        long r = write(w, bad, 4);
        int e = errno;
        close(w);
        errno = e;
        r;
    }));
    val("offset.after_efault_read", lseek(fd, 0, SEEK_CUR));
    close(fd);
    struct stat st;
    val("EFAULT.nothing_written", stat("efault-out", &st) == 0 ? (long)st.st_size : -1);
    return 0;
}
