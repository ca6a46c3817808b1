/* ropen: read-only opens of one file, again and again, and fds on it that outlive their
 * open: a dup, a reopen through /dev/fd, a mapping after close, a child's inherited fd,
 * and opens failing at the fd limit (EMFILE) and working again after it. */
#include "probe.h"
#include <sys/mman.h>
#include <sys/resource.h>

#define CONTENT "0123456789abcdefghij"

static void read_at(const char *label, int fd, off_t off)
{
    char buf[16];
    ssize_t n = pread(fd, buf, 6, off);
    out_read(label, n, buf);
}

static void same_content(const char *label, int times)
{
    int same = 1;
    for (int i = 0; i < times; i++) {
        char buf[64];
        ssize_t n = get_file("data", buf, sizeof buf);
        same &= n == (ssize_t)strlen(CONTENT) && strcmp(buf, CONTENT) == 0;
    }
    out(label, "%s", yesno(same));
}

static void outlive(void)
{
    int fd = open("data", O_RDONLY);
    int d = dup(fd);
    close(fd);
    read_at("dup.read_after_the_original_closed", d, 0);
    char path[64];
    snprintf(path, sizeof path, "/dev/fd/%d", d);
    int r = open(path, O_RDONLY);
    close(d);
    read_at("devfd.read_after_the_first_closed", r, 4);
    struct stat a, b;
    if (fstat(r, &a) < 0 || stat("data", &b) < 0)
        die("fstat/stat");
    out("devfd.fstat_is_the_file", "%s", yesno(a.st_ino == b.st_ino && a.st_size == b.st_size));
    char *m = mmap(NULL, 20, PROT_READ, MAP_PRIVATE, r, 0);
    close(r);
    if (m == MAP_FAILED) {
        out("mmap.after_close", "%s", errname(errno));
    } else {
        same_content("mmap.opened_again_while_mapped", 20);
        out_bytes("mmap.after_close", m, 6);
        munmap(m, 20);
    }
}

static void child_holds_it(void)
{
    int fd = open("data", O_RDONLY);
    int p[2];
    if (fd < 0 || pipe(p) < 0)
        die("open/pipe");
    pid_t c = fork();
    if (c < 0)
        die("fork");
    if (c == 0) {
        char x;
        close(p[1]);
        if (read(p[0], &x, 1) != 1)
            _exit(3);
        read_at("fork.child_reads_after_the_parent_closed", fd, 10);
        fflush(stdout);
        _exit(0);
    }
    close(p[0]);
    close(fd);
    same_content("fork.parent_opens_it_again", 20);
    fflush(stdout);
    if (write(p[1], "x", 1) != 1)
        die("write");
    int st;
    waitpid(c, &st, 0);
    out("fork.child", "%s", wstatus(st));
}

static void at_the_fd_limit(void)
{
    struct rlimit was, low;
    if (getrlimit(RLIMIT_NOFILE, &was) < 0)
        die("getrlimit");
    low = was;
    low.rlim_cur = 40;
    if (setrlimit(RLIMIT_NOFILE, &low) < 0)
        die("setrlimit");
    int fds[64], n = 0, err = 0;
    while (n < 64) {
        int f = open("data", O_RDONLY);
        if (f < 0) {
            err = errno;
            break;
        }
        fds[n++] = f;
    }
    out("emfile.error", "%s", errname(err));
    int fails = 0;
    for (int i = 0; i < 300; i++)
        fails += open("data", O_RDONLY) < 0 && errno == EMFILE;
    val("emfile.failed_opens_of_300", fails);
    read_at("emfile.held_fd_still_reads", fds[n - 1], 2);
    for (int i = 0; i < n; i++)
        close(fds[i]);
    if (setrlimit(RLIMIT_NOFILE, &was) < 0)
        die("setrlimit");
    same_content("emfile.opens_work_again", 50);
}

int main(int argc, char **argv)
{
    probe_init(argc, argv);
    put_file("data", CONTENT);
    same_content("reopen.200_times_the_same_content", 200);
    outlive();
    child_holds_it();
    at_the_fd_limit();
    return 0;
}
