/* files: open/openat/creat/openat2, read/write, pread64/pwrite64,
 * readv/writev, preadv/pwritev, lseek (incl. holes), close, O_APPEND,
 * O_EXCL, O_TRUNC, O_RDWR read-after-write, lowest-free fd numbering. */
#include "probe.h"
#include <linux/openat2.h>
#include <sys/uio.h>

static long sys_openat2(int dirfd, const char *path, unsigned long long flags,
                        unsigned long long mode, unsigned long long resolve)
{
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    return syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

static void show_mode(const char *name, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        out(name, "%s", errname(errno));
    else
        out(name, "%s %04o size=%lld", ftype(st.st_mode), st.st_mode & 07777,
            (long long)st.st_size);
}

int main(int argc, char **argv)
{
    char buf[256];
    ssize_t n;

    probe_init(argc, argv);

    /* --- fd numbering: lowest free descriptor --- */
    int a = open("a.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int b = openat(AT_FDCWD, "b.txt", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int c = creat("c.txt", 0640);
    int d = (int)sys_openat2(AT_FDCWD, "d.txt", O_RDWR | O_CREAT | O_EXCL, 0644, 0);
    val("fd.open", a);
    val("fd.openat", b);
    val("fd.creat", c);
    val("fd.openat2", d);
    val("close.b", close(b));
    int e = open("e.txt", O_WRONLY | O_CREAT, 0644);
    val("fd.reuse_after_close", e);
    val("close.a", close(a));
    val("close.c", close(c));
    val("close.d", close(d));
    val("close.e", close(e));
    val("close.again", close(e));
    show_mode("mode.a", "a.txt");
    show_mode("mode.b", "b.txt");
    show_mode("mode.c", "c.txt");
    show_mode("mode.d", "d.txt");

    /* openat2 details */
    val("openat2.missing", sys_openat2(AT_FDCWD, "nope", O_RDONLY, 0, 0));
    val("openat2.unknown_flag_bits", sys_openat2(AT_FDCWD, "a.txt", O_RDONLY, 0, 1ULL << 40));
    int od = (int)sys_openat2(AT_FDCWD, "a.txt", O_RDONLY, 0, RESOLVE_NO_SYMLINKS);
    val("openat2.resolve_no_symlinks", od);
    if (od >= 0)
        close(od);
    val("openat2.mode_without_creat", sys_openat2(AT_FDCWD, "a.txt", O_RDONLY, 0644, 0));

    /* --- write / read --- */
    int fd = open("data.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("open data.txt");
    val("write.hello", write(fd, "hello world\n", 12));
    val("lseek.cur_after_write", lseek(fd, 0, SEEK_CUR));
    n = read(fd, buf, sizeof buf);
    out_read("read.at_eof", n, buf);
    val("lseek.set0", lseek(fd, 0, SEEK_SET));
    n = read(fd, buf, 5);
    out_read("read.rdwr_after_write", n, buf);
    val("lseek.cur", lseek(fd, 1, SEEK_CUR));
    n = read(fd, buf, sizeof buf);
    out_read("read.rest", n, buf);
    val("lseek.end", lseek(fd, 0, SEEK_END));
    val("lseek.end_minus6", lseek(fd, -6, SEEK_END));
    n = read(fd, buf, 3);
    out_read("read.from_end_minus6", n, buf);

    /* pread/pwrite do not move the file offset */
    val("lseek.before_pread", lseek(fd, 2, SEEK_SET));
    n = pread(fd, buf, 5, 6);
    out_read("pread.6", n, buf);
    val("pwrite.0", pwrite(fd, "HELLO", 5, 0));
    val("lseek.after_pread_pwrite", lseek(fd, 0, SEEK_CUR));
    n = pread(fd, buf, sizeof buf, 0);
    out_read("pread.all", n, buf);
    n = pread(fd, buf, 10, 1000);
    out_read("pread.beyond_eof", n, buf);

    /* holes: seek beyond EOF then write */
    val("lseek.beyond_eof", lseek(fd, 100, SEEK_SET));
    val("write.after_hole", write(fd, "X", 1));
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat");
    out("size.after_hole", "%lld", (long long)st.st_size);
    n = pread(fd, buf, 101, 0);
    int zeros = 0;
    for (ssize_t i = 12; i < 100 && i < n; i++)
        zeros += buf[i] == 0;
    out("hole.read_len", "%zd", n);
    out("hole.zero_bytes_12_to_99", "%d", zeros);
    out("hole.last_byte", "%c", n == 101 ? buf[100] : '?');
    val("lseek.seek_end_plus", lseek(fd, 10, SEEK_END));
    val("lseek.negative", lseek(fd, -1, SEEK_SET));
    val("lseek.cur_unchanged_after_error", lseek(fd, 0, SEEK_CUR));

    /* readv / writev / preadv / pwritev */
    val("ftruncate0", ftruncate(fd, 0));
    val("lseek.reset", lseek(fd, 0, SEEK_SET));
    struct iovec wv[3] = {
        {.iov_base = "abc", .iov_len = 3},
        {.iov_base = "", .iov_len = 0},
        {.iov_base = "defgh", .iov_len = 5},
    };
    val("writev", writev(fd, wv, 3));
    struct iovec pwv[2] = {{.iov_base = "12", .iov_len = 2}, {.iov_base = "345", .iov_len = 3}};
    val("pwritev.at20", pwritev(fd, pwv, 2, 20));
    val("lseek.after_pwritev", lseek(fd, 0, SEEK_CUR));
    val("lseek.set1", lseek(fd, 1, SEEK_SET));
    char r1[2], r2[4], r3[64];
    struct iovec rv[3] = {{r1, sizeof r1}, {r2, sizeof r2}, {r3, sizeof r3}};
    n = readv(fd, rv, 3);
    out("readv.total", "%zd", n);
    out_bytes("readv.iov0", r1, sizeof r1);
    out_bytes("readv.iov1", r2, sizeof r2);
    out_bytes("readv.iov2", r3, n > 6 ? n - 6 : 0);
    char p1[3], p2[5];
    struct iovec prv[2] = {{p1, sizeof p1}, {p2, sizeof p2}};
    n = preadv(fd, prv, 2, 19);
    out("preadv.total", "%zd", n);
    out_bytes("preadv.iov0", p1, n < 3 ? n : 3);
    out_bytes("preadv.iov1", p2, n > 3 ? n - 3 : 0);
    val("lseek.after_preadv", lseek(fd, 0, SEEK_CUR));
    val("close.data", close(fd));

    /* --- O_APPEND --- */
    put_file("app.txt", "one\n");
    fd = open("app.txt", O_WRONLY | O_APPEND);
    val("append.open", fd);
    val("append.lseek0", lseek(fd, 0, SEEK_SET));
    val("append.write", write(fd, "two\n", 4));
    val("append.offset_after_write", lseek(fd, 0, SEEK_CUR));
    val("append.pwrite_at0", pwrite(fd, "three\n", 6, 0)); /* Linux: appends */
    close(fd);
    n = get_file("app.txt", buf, sizeof buf);
    out_read("append.content", n, buf);

    /* --- O_EXCL / O_TRUNC --- */
    val("excl.existing", open("app.txt", O_WRONLY | O_CREAT | O_EXCL, 0644));
    val("excl.existing_openat2", sys_openat2(AT_FDCWD, "app.txt", O_WRONLY | O_CREAT | O_EXCL, 0644, 0));
    fd = open("app.txt", O_WRONLY | O_TRUNC);
    val("trunc.open", fd);
    if (fstat(fd, &st) == 0)
        out("trunc.size", "%lld", (long long)st.st_size);
    close(fd);
    fd = open("new_excl.txt", O_WRONLY | O_CREAT | O_EXCL, 0600);
    val("excl.new", fd);
    close(fd);
    show_mode("mode.new_excl", "new_excl.txt");
    /* creat() truncates an existing file */
    put_file("c2.txt", "some content");
    fd = creat("c2.txt", 0777);
    close(fd);
    show_mode("creat.existing_keeps_mode", "c2.txt");

    /* --- a read-only file read with several sizes --- */
    {
        char pat[1000];
        for (int i = 0; i < 1000; i++)
            pat[i] = (char)('a' + i % 26);
        fd = open("ro.txt", O_WRONLY | O_CREAT | O_TRUNC, 0444);
        if (fd < 0 || write(fd, pat, sizeof pat) != (ssize_t)sizeof pat)
            die("ro.txt");
        close(fd);
        show_mode("mode.ro", "ro.txt");
        fd = open("ro.txt", O_RDONLY);
        val("ro.open", fd);
        static const int sizes[] = {1, 7, 64, 100, 333, 1000};
        unsigned total = 0, sum = 0;
        char big[1024];
        for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            n = read(fd, big, (size_t)sizes[i]);
            char name[32];
            snprintf(name, sizeof name, "ro.read%d", sizes[i]);
            if (n < 0) {
                out(name, "%s", errname(errno));
                continue;
            }
            total += (unsigned)n;
            for (ssize_t j = 0; j < n; j++)
                sum = sum * 31 + (unsigned char)big[j];
            out(name, "%zd first=%c last=%c", n, n ? big[0] : '-', n ? big[n - 1] : '-');
        }
        out("ro.total", "%u", total);
        out("ro.hash", "%08x", sum);
        val("ro.write", write(fd, "x", 1));
        close(fd);
        /* root may open a 0444 file for writing; print the outcome anyway */
    }

    /* --- write through one fd, read through a second fd opened later --- */
    int w = open("later.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    val("later.w", w);
    val("later.write1", write(w, "first line\n", 11));
    int r = open("later.txt", O_RDONLY);
    val("later.r", r);
    n = read(r, buf, sizeof buf);
    out_read("later.read1", n, buf);
    val("later.write2", write(w, "second\n", 7));
    n = read(r, buf, sizeof buf);
    out_read("later.read2_continues", n, buf);
    n = read(r, buf, sizeof buf);
    out_read("later.read3_eof", n, buf);
    close(w);
    close(r);

    /* openat relative to a directory fd, and O_CREAT mode honoured */
    if (mkdir("sub", 0755) != 0)
        die("mkdir sub");
    int dfd = open("sub", O_RDONLY | O_DIRECTORY);
    val("dirfd", dfd);
    fd = openat(dfd, "inner.txt", O_RDWR | O_CREAT, 0604);
    val("openat.dirfd", fd);
    val("openat.write", write(fd, "inner", 5));
    close(fd);
    fd = (int)sys_openat2(dfd, "inner.txt", O_RDONLY, 0, 0);
    val("openat2.dirfd", fd);
    n = read(fd, buf, sizeof buf);
    out_read("openat2.dirfd.read", n, buf);
    close(fd);
    show_mode("mode.inner", "sub/inner.txt");
    close(dfd);

    /* final fd check: everything closed, next open gets 3 */
    fd = open(".", O_RDONLY);
    val("fd.final", fd);
    close(fd);
    return 0;
}
