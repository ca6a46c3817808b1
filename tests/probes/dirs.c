/* dirs: mkdir/mkdirat, rmdir, getdents64, readdir, unlink/unlinkat,
 * rename/renameat/renameat2, link/linkat, symlink/symlinkat,
 * readlink/readlinkat, chdir/fchdir/getcwd, *at calls on a dirfd, "." and "..". */
#include "probe.h"
#include <dirent.h>
#include <limits.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

struct linux_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static const char *dtype(unsigned char t)
{
    switch (t) {
    case DT_REG: return "reg";
    case DT_DIR: return "dir";
    case DT_LNK: return "lnk";
    case DT_FIFO: return "fifo";
    case DT_UNKNOWN: return "unknown";
    default: return "other";
    }
}

static int cmpstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Print the sorted "name/type" listing of a directory via getdents64. */
static void list_getdents(const char *label, const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        out(label, "%s", errname(errno));
        return;
    }
    char *names[256];
    int count = 0, calls = 0;
    /* small buffer so that several getdents64 calls are needed */
    _Alignas(8) char buf[128];
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        calls++;
        if (n < 0) {
            out(label, "%s", errname(errno));
            break;
        }
        if (n == 0)
            break;
        for (long off = 0; off < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
            char tmp[300];
            snprintf(tmp, sizeof tmp, "%s/%s", d->d_name, dtype(d->d_type));
            if (count < 256)
                names[count++] = strdup(tmp);
            off += d->d_reclen;
        }
    }
    close(fd);
    qsort(names, (size_t)count, sizeof names[0], cmpstr);
    printf("%s: count=%d multi_call=%s [", label, count, yesno(calls > 2));
    for (int i = 0; i < count; i++) {
        printf(i ? " %s" : "%s", names[i]);
        free(names[i]);
    }
    printf("]\n");
}

static void list_readdir(const char *label, const char *path)
{
    DIR *dir = opendir(path);
    if (!dir) {
        out(label, "%s", errname(errno));
        return;
    }
    char *names[256];
    int count = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL)
        if (count < 256)
            names[count++] = strdup(de->d_name);
    closedir(dir);
    qsort(names, (size_t)count, sizeof names[0], cmpstr);
    printf("%s: count=%d [", label, count);
    for (int i = 0; i < count; i++) {
        printf(i ? " %s" : "%s", names[i]);
        free(names[i]);
    }
    printf("]\n");
}

static void show_readlink(const char *label, int dirfd, const char *path)
{
    char buf[PATH_MAX];
    ssize_t n = dirfd == AT_FDCWD ? readlink(path, buf, sizeof buf)
                                  : readlinkat(dirfd, path, buf, sizeof buf);
    out_read(label, n, buf);
}

static void show_nlink(const char *label, const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        out(label, "%s", errname(errno));
    else
        out(label, "%s nlink=%lu", ftype(st.st_mode), (unsigned long)st.st_nlink);
}

static void show_content(const char *label, const char *path)
{
    char buf[256];
    ssize_t n = get_file(path, buf, sizeof buf);
    out_read(label, n, buf);
}

/* getcwd printed both absolute and relative to WORKDIR */
static void show_cwd(const char *label)
{
    char buf[PATH_MAX];
    char name[64];
    if (getcwd(buf, sizeof buf) == NULL) {
        out(label, "%s", errname(errno));
        return;
    }
    size_t wl = strlen(probe_workdir);
    snprintf(name, sizeof name, "%s.abs", label);
    out(name, "%s", buf);
    snprintf(name, sizeof name, "%s.rel", label);
    if (strncmp(buf, probe_workdir, wl) == 0 && (buf[wl] == '/' || buf[wl] == '\0'))
        out(name, "WORKDIR%s", buf + wl);
    else
        out(name, "outside WORKDIR");
}

int main(int argc, char **argv)
{
    probe_init(argc, argv);
    umask(022);

    show_cwd("cwd.start");
    list_getdents("getdents.empty_workdir", ".");

    /* mkdir / mkdirat */
    res("mkdir.a", mkdir("a", 0755));
    res("mkdir.a_again", mkdir("a", 0755));
    res("mkdir.nested_missing_parent", mkdir("x/y", 0755));
    res("mkdir.a_b", mkdir("a/b", 0700));
    int dfd = open("a", O_RDONLY | O_DIRECTORY);
    val("open.a_dirfd", dfd);
    res("mkdirat.c", mkdirat(dfd, "c", 0755));
    res("mkdirat.cwd_e", mkdirat(AT_FDCWD, "e", 0755));
    show_nlink("nlink.a_with_2_subdirs", "a");

    /* files for listings */
    put_file("a/f1", "one\n");
    int fd = openat(dfd, "f2", O_WRONLY | O_CREAT, 0644);
    val("openat.a_f2", fd);
    if (write(fd, "two\n", 4) != 4)
        die("write f2");
    close(fd);
    res("symlinkat.a_sl", symlinkat("f1", dfd, "sl"));
    res("symlink.top", symlink("a/f1", "top-link"));
    res("symlink.exists", symlink("a/f1", "top-link"));
    res("symlink.dir", symlink("a/c", "dirlink"));
    for (int i = 0; i < 12; i++) {
        char name[64];
        snprintf(name, sizeof name, "a/c/entry-with-a-longish-name-%02d", i);
        put_file(name, "x");
    }
    list_getdents("getdents.a", "a");
    list_getdents("getdents.a_c", "a/c");
    list_getdents("getdents.workdir", ".");
    list_readdir("readdir.a", "a");
    list_readdir("readdir.workdir", ".");
    list_getdents("getdents.on_file", "a/f1");
    {
        int ffd = open("a/f1", O_RDONLY);
        char b[256];
        long n = syscall(SYS_getdents64, ffd, b, sizeof b);
        out("getdents.file_fd", "%s", n < 0 ? errname(errno) : "ok");
        close(ffd);
        n = syscall(SYS_getdents64, dfd, b, 8);
        out("getdents.tiny_buffer", "%s", n < 0 ? errname(errno) : "ok");
    }

    /* readlink / readlinkat */
    show_readlink("readlink.top", AT_FDCWD, "top-link");
    show_readlink("readlinkat.a_sl", dfd, "sl");
    show_readlink("readlink.not_link", AT_FDCWD, "a/f1");
    show_readlink("readlink.missing", AT_FDCWD, "nope");
    {
        char small[3];
        ssize_t n = readlink("top-link", small, sizeof small);
        out_read("readlink.truncated", n, small);
    }
    show_content("read.through_symlink", "top-link");
    show_content("read.through_dir_symlink_path", "a/sl");

    /* link / linkat */
    res("link.f1_h1", link("a/f1", "h1"));
    show_nlink("nlink.f1_after_link", "a/f1");
    res("linkat.f2_h2", linkat(dfd, "f2", AT_FDCWD, "h2", 0));
    show_nlink("nlink.f2_after_linkat", "a/f2");
    res("link.exists", link("a/f1", "h1"));
    res("link.dir", link("a", "a-hard"));
    res("linkat.symlink_nofollow", linkat(AT_FDCWD, "top-link", AT_FDCWD, "h-sl", 0));
    show_nlink("linkat.nofollow_result", "h-sl");
    res("linkat.symlink_follow", linkat(AT_FDCWD, "top-link", AT_FDCWD, "h-follow", AT_SYMLINK_FOLLOW));
    show_nlink("linkat.follow_result", "h-follow");
    show_nlink("nlink.f1_after_follow", "a/f1");

    /* unlink / unlinkat */
    res("unlink.h-follow", unlink("h-follow"));
    res("unlink.h-sl", unlink("h-sl"));
    show_nlink("nlink.f1_after_unlinks", "a/f1");
    res("unlink.dir", unlink("a/b"));
    res("unlinkat.removedir_on_file", unlinkat(dfd, "f2", AT_REMOVEDIR));
    res("unlinkat.file", unlinkat(AT_FDCWD, "h2", 0));
    show_nlink("nlink.f2_after_unlinkat", "a/f2");
    res("unlinkat.removedir_b", unlinkat(dfd, "b", AT_REMOVEDIR));
    res("unlink.missing", unlink("a/nope"));

    /* rmdir */
    res("rmdir.nonempty", rmdir("a/c"));
    res("rmdir.e", rmdir("e"));
    res("rmdir.e_again", rmdir("e"));
    res("rmdir.file", rmdir("h1"));
    res("rmdir.dot", rmdir("a/c/."));

    /* rename / renameat / renameat2 */
    put_file("r1", "R1");
    put_file("r2", "R2");
    res("rename.r1_r3", rename("r1", "r3"));
    show_nlink("rename.r1_gone", "r1");
    show_content("rename.r3_content", "r3");
    res("rename.over_existing", rename("r3", "r2"));
    show_content("rename.r2_replaced", "r2");
    res("renameat.into_a", renameat(AT_FDCWD, "r2", dfd, "r2-in-a"));
    show_content("renameat.result", "a/r2-in-a");
    put_file("x1", "X1");
    put_file("x2", "X2");
    res("renameat2.noreplace_existing",
        syscall(SYS_renameat2, AT_FDCWD, "x1", AT_FDCWD, "x2", RENAME_NOREPLACE));
    res("renameat2.noreplace_new",
        syscall(SYS_renameat2, AT_FDCWD, "x1", AT_FDCWD, "x3", RENAME_NOREPLACE));
    res("renameat2.exchange",
        syscall(SYS_renameat2, AT_FDCWD, "x2", AT_FDCWD, "x3", RENAME_EXCHANGE));
    show_content("renameat2.x2_after_exchange", "x2");
    show_content("renameat2.x3_after_exchange", "x3");
    res("renameat2.exchange_missing",
        syscall(SYS_renameat2, AT_FDCWD, "x2", AT_FDCWD, "nope", RENAME_EXCHANGE));
    res("renameat2.both_flags",
        syscall(SYS_renameat2, AT_FDCWD, "x2", AT_FDCWD, "x3", RENAME_EXCHANGE | RENAME_NOREPLACE));
    res("rename.dir_into_itself", rename("a", "a/c/inside"));
    res("mkdir.e2", mkdir("e2", 0755));
    res("rename.empty_dir_over_nonempty", rename("e2", "a"));
    res("rename.dir_over_file", rename("e2", "x2"));
    res("rename.file_over_dir", rename("x2", "e2"));
    res("rename.same", rename("x2", "x2"));
    res("rename.missing", rename("nope", "nope2"));

    /* chdir / fchdir / getcwd */
    res("chdir.a_c", chdir("a/c"));
    show_cwd("cwd.after_chdir");
    fd = open("entry-with-a-longish-name-00", O_RDONLY);
    out("open.relative_after_chdir", "%s", fd >= 0 ? "ok" : errname(errno));
    if (fd >= 0)
        close(fd);
    res("chdir.dotdot", chdir(".."));
    show_cwd("cwd.after_dotdot");
    int wfd = open(probe_workdir, O_RDONLY | O_DIRECTORY);
    res("fchdir.workdir", fchdir(wfd));
    show_cwd("cwd.after_fchdir");
    res("chdir.file", chdir("h1"));
    res("chdir.missing", chdir("nope"));
    res("fchdir.file_fd", ({ int t = open("h1", O_RDONLY); int r = fchdir(t); int e = errno; close(t); errno = e; r; }));
    res("chdir.symlink_to_dir", chdir("dirlink"));
    show_cwd("cwd.after_chdir_via_symlink");
    res("chdir.back_to_workdir", chdir(".."));
    res("chdir.back_to_workdir2", chdir(".."));
    show_cwd("cwd.after_symlink_dotdot");
    res("chdir.abs_workdir", chdir(probe_workdir));
    show_cwd("cwd.final");
    {
        char small[4];
        char *p = getcwd(small, sizeof small);
        out("getcwd.small_buffer", "%s", p ? "ok" : errname(errno));
    }

    /* *at calls relative to a directory fd after cwd moved elsewhere */
    res("chdir.root", chdir("/"));
    int cfd = openat(dfd, "c/entry-with-a-longish-name-01", O_RDONLY);
    out("openat.dirfd_independent_of_cwd", "%s", cfd >= 0 ? "ok" : errname(errno));
    if (cfd >= 0)
        close(cfd);
    struct stat st;
    res("fstatat.dirfd_after_chdir", fstatat(dfd, "f1", &st, 0));
    res("fchdir.back", fchdir(wfd));
    show_cwd("cwd.back");

    /* opening "." and ".." */
    int dot = open(".", O_RDONLY | O_DIRECTORY);
    val("open.dot", dot);
    int dotdot = openat(dfd, "..", O_RDONLY | O_DIRECTORY);
    val("openat.a_dotdot", dotdot);
    struct stat s1, s2;
    if (dot >= 0 && dotdot >= 0 && fstat(dot, &s1) == 0 && fstat(dotdot, &s2) == 0)
        out("same_dir.dot_vs_a_dotdot", "%s", yesno(s1.st_ino == s2.st_ino && s1.st_dev == s2.st_dev));
    res("faccessat.dotdot_f1", faccessat(dotdot, "a/f1", R_OK, 0));
    close(dot);
    close(dotdot);
    res("open.dot_wronly", open(".", O_WRONLY));
    res("mkdir.dot", mkdir(".", 0755));
    res("rmdir.dotdot", rmdir("a/.."));
    list_getdents("getdents.final_workdir", ".");
    list_getdents("getdents.final_a", "a");
    close(dfd);
    close(wfd);
    return 0;
}
