/* fds: dup/dup2/dup3, fcntl F_DUPFD/F_DUPFD_CLOEXEC/F_GETFD/F_SETFD/F_GETFL/F_SETFL,
 * shared offsets (dup, fork), O_CLOEXEC across execve, unlinked-but-open files.
 *
 * Re-exec mode: SELF --check-fds CLOEXEC_FD KEPT_FD (run via execve by main). */
#include "probe.h"

static void show_fl(const char *label, int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) {
        out(label, "%s", errname(errno));
        return;
    }
    int acc = fl & O_ACCMODE;
    out(label, "accmode=%s append=%s nonblock=%s", acc == O_RDONLY ? "O_RDONLY"
        : acc == O_WRONLY ? "O_WRONLY" : acc == O_RDWR ? "O_RDWR" : "other",
        yesno(fl & O_APPEND), yesno(fl & O_NONBLOCK));
}

static void show_fd_flags(const char *label, int fd)
{
    int f = fcntl(fd, F_GETFD);
    if (f < 0)
        out(label, "%s", errname(errno));
    else
        out(label, "cloexec=%s", yesno(f & FD_CLOEXEC));
}

static int check_fds_mode(char **argv)
{
    int cloexec_fd = atoi(argv[2]);
    int kept_fd = atoi(argv[3]);
    char buf[64];
    out("exec.cloexec_fd_getfd", "%s", fcntl(cloexec_fd, F_GETFD) < 0 ? errname(errno) : "open");
    out("exec.kept_fd_getfd", "%s", fcntl(kept_fd, F_GETFD) < 0 ? errname(errno) : "open");
    val("exec.kept_fd_offset_inherited", lseek(kept_fd, 0, SEEK_CUR));
    ssize_t n = read(kept_fd, buf, sizeof buf);
    out_read("exec.kept_fd_read", n, buf);
    /* the lowest free fd in the new image must be the closed CLOEXEC slot */
    int fd = open(".", O_RDONLY);
    out("exec.first_open_reuses_cloexec_slot", "%s", yesno(fd == cloexec_fd));
    fflush(stdout);
    return 5;
}

int main(int argc, char **argv)
{
    char buf[128];
    ssize_t n;

    if (argc == 4 && strcmp(argv[1], "--check-fds") == 0) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        return check_fds_mode(argv);
    }
    probe_init(argc, argv);
    if (!*probe_self)
        die("need SELF as argv[2]");

    put_file("data", "0123456789abcdefghij");
    int fd = open("data", O_RDONLY);
    val("open.data", fd);

    /* dup family */
    int d1 = dup(fd);
    val("dup", d1);
    val("dup2.to_10", dup2(fd, 10));
    val("dup2.same_fd", dup2(fd, fd));
    val("dup3.same_fd", dup3(fd, fd, 0));
    val("dup3.to_11_cloexec", dup3(fd, 11, O_CLOEXEC));
    val("dup3.bad_flags", dup3(fd, 12, 0x1234));
    val("dup.badfd", dup(9999));
    val("dup2.badfd", dup2(9999, 12));
    show_fd_flags("getfd.dup", d1);
    show_fd_flags("getfd.dup3_cloexec", 11);
    val("fcntl.dupfd_min20", fcntl(fd, F_DUPFD, 20));
    val("fcntl.dupfd_min20_again", fcntl(fd, F_DUPFD, 20));
    val("fcntl.dupfd_cloexec_min5", fcntl(fd, F_DUPFD_CLOEXEC, 5));
    show_fd_flags("getfd.dupfd_cloexec", 5);
    show_fd_flags("getfd.dupfd_plain", 20);
    val("fcntl.setfd_cloexec", fcntl(20, F_SETFD, FD_CLOEXEC));
    show_fd_flags("getfd.after_setfd", 20);
    val("fcntl.setfd_clear", fcntl(20, F_SETFD, 0));
    show_fd_flags("getfd.after_clear", 20);
    val("fcntl.getfd_badfd", fcntl(9999, F_GETFD));

    /* dup2 onto an open fd closes it silently; the old file is gone */
    int other = open(".", O_RDONLY | O_DIRECTORY);
    val("open.other", other);
    val("dup2.onto_open", dup2(fd, other));
    n = read(other, buf, 3);
    out_read("read.via_dup2_target", n, buf);

    /* shared offsets between dup'd fds */
    val("lseek.fd_after_read_via_dup", lseek(fd, 0, SEEK_CUR));
    val("lseek.d1_set7", lseek(d1, 7, SEEK_SET));
    val("lseek.fd_sees_7", lseek(fd, 0, SEEK_CUR));
    val("lseek.10_sees_7", lseek(10, 0, SEEK_CUR));
    n = read(10, buf, 2);
    out_read("read.via_10", n, buf);
    val("lseek.fd_sees_9", lseek(fd, 0, SEEK_CUR));
    for (int i = 5; i <= 30; i++)
        if (i != fd && i != d1)
            close(i);
    close(d1);

    /* F_GETFL / F_SETFL */
    show_fl("getfl.rdonly", fd);
    int w = open("w", O_WRONLY | O_CREAT | O_APPEND, 0644);
    show_fl("getfl.wronly_append", w);
    val("fcntl.setfl_clear_append", fcntl(w, F_SETFL, 0));
    show_fl("getfl.after_clear_append", w);
    int rw = open("w", O_RDWR);
    show_fl("getfl.rdwr", rw);
    val("fcntl.setfl_append", fcntl(rw, F_SETFL, O_APPEND));
    show_fl("getfl.rdwr_after_setfl", rw);
    int dw = dup(w);
    show_fl("getfl.dup_shares_status", dw);
    close(dw);
    close(rw);
    close(w);
    int p[2];
    if (pipe2(p, O_NONBLOCK) != 0)
        die("pipe2");
    show_fl("getfl.pipe_read_nonblock", p[0]);
    show_fl("getfl.pipe_write_nonblock", p[1]);
    n = read(p[0], buf, 1);
    out("read.empty_nonblock_pipe", "%s", n < 0 ? errname(errno) : "data");
    close(p[0]);
    close(p[1]);

    /* offset shared between parent and forked child */
    val("lseek.before_fork", lseek(fd, 0, SEEK_SET));
    pid_t pid = probe_fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        char c[5];
        _exit(read(fd, c, 5) == 5 ? 0 : 1);
    }
    int st;
    waitpid(pid, &st, 0);
    out("fork.child_status", "%s", wstatus(st));
    val("lseek.parent_sees_child_read", lseek(fd, 0, SEEK_CUR));
    n = read(fd, buf, 3);
    out_read("read.parent_after_child", n, buf);

    /* CLOEXEC fd does not survive execve; plain fd keeps its offset */
    int ce = open("data", O_RDONLY | O_CLOEXEC);
    int kept = open("data", O_RDONLY);
    val("open.cloexec", ce);
    val("open.kept", kept);
    show_fd_flags("getfd.o_cloexec", ce);
    show_fd_flags("getfd.kept", kept);
    val("lseek.kept_12", lseek(kept, 12, SEEK_SET));
    pid = probe_fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        char a1[16], a2[16];
        snprintf(a1, sizeof a1, "%d", ce);
        snprintf(a2, sizeof a2, "%d", kept);
        char *args[] = {(char *)probe_self, "--check-fds", a1, a2, NULL};
        execv(probe_self, args);
        _exit(127);
    }
    waitpid(pid, &st, 0);
    out("exec.child_status", "%s", wstatus(st));
    val("lseek.kept_after_child_read", lseek(kept, 0, SEEK_CUR));
    close(ce);
    close(kept);

    /* reading through an fd after the path was unlinked */
    put_file("gone", "still readable\n");
    int g = open("gone", O_RDWR);
    res("unlink.gone", unlink("gone"));
    res("access.gone", access("gone", F_OK));
    struct stat sb;
    if (fstat(g, &sb) == 0)
        out("fstat.unlinked", "nlink=%lu size=%lld", (unsigned long)sb.st_nlink, (long long)sb.st_size);
    n = read(g, buf, sizeof buf);
    out_read("read.unlinked", n, buf);
    val("write.unlinked", write(g, "more", 4));
    n = pread(g, buf, sizeof buf, 0);
    out_read("pread.unlinked", n, buf);
    put_file("gone", "new file\n");
    n = pread(g, buf, sizeof buf, 0);
    out_read("pread.unlinked_after_recreate", n, buf);
    close(g);

    /* closed fds */
    close(fd);
    val("read.closed_fd", read(fd, buf, 1));
    val("close.closed_fd", close(fd));
    val("open.lowest_after_all_closed", open("data", O_RDONLY));
    return 0;
}
