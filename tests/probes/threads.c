/* threads: 4 pthreads each create/write/close their own file and append to a
 * shared O_APPEND file under a mutex; gettid/getpid relations; join; the main
 * thread prints sorted file contents. */
#include "probe.h"
#include <pthread.h>

#define NTHREADS 4
#define LINES_PER_THREAD 5

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int shared_fd = -1;

struct tinfo {
    int idx;
    pid_t tid;
    pid_t pid;
    int own_fd;
    int errors;
    int fd_distinct_from_shared;
};

static void *worker(void *arg)
{
    struct tinfo *t = arg;
    t->tid = (pid_t)syscall(SYS_gettid);
    t->pid = getpid();
    char name[32], line[64];
    snprintf(name, sizeof name, "thread-%d.txt", t->idx);
    int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    t->own_fd = fd;
    if (fd < 0) {
        t->errors++;
        return NULL;
    }
    t->fd_distinct_from_shared = fd != shared_fd;
    for (int i = 0; i < LINES_PER_THREAD; i++) {
        int n = snprintf(line, sizeof line, "thread %d own line %d\n", t->idx, i);
        if (write(fd, line, (size_t)n) != n)
            t->errors++;
        n = snprintf(line, sizeof line, "shared t%d l%d\n", t->idx, i);
        pthread_mutex_lock(&lock);
        if (write(shared_fd, line, (size_t)n) != n)
            t->errors++;
        pthread_mutex_unlock(&lock);
        sched_yield();
    }
    if (close(fd) != 0)
        t->errors++;
    /* read back own file through a fresh fd from this thread */
    char buf[512];
    ssize_t got = get_file(name, buf, sizeof buf);
    if (got != LINES_PER_THREAD * (ssize_t)strlen("thread 0 own line 0\n"))
        t->errors++;
    return NULL;
}

static int cmpstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    probe_init(argc, argv);
    umask(022);

    shared_fd = open("shared.log", O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0644);
    val("open.shared", shared_fd);
    if (shared_fd < 0)
        die("open shared.log");
    if (write(shared_fd, "header\n", 7) != 7)
        die("write header");

    pthread_t th[NTHREADS];
    struct tinfo info[NTHREADS];
    memset(info, 0, sizeof info);
    for (int i = 0; i < NTHREADS; i++) {
        info[i].idx = i;
        if (pthread_create(&th[i], NULL, worker, &info[i]) != 0)
            die("pthread_create");
    }
    int joined = 0;
    for (int i = 0; i < NTHREADS; i++)
        joined += pthread_join(th[i], NULL) == 0;
    out("threads.joined", "%d", joined);

    pid_t me = getpid();
    pid_t main_tid = (pid_t)syscall(SYS_gettid);
    int errors = 0, pid_same = 1, tid_not_pid = 1, distinct = 1, fd_ok = 1;
    for (int i = 0; i < NTHREADS; i++) {
        errors += info[i].errors;
        pid_same &= info[i].pid == me;
        tid_not_pid &= info[i].tid != me && info[i].tid != main_tid && info[i].tid > 0;
        fd_ok &= info[i].own_fd > 2 && info[i].fd_distinct_from_shared;
        for (int j = 0; j < i; j++)
            distinct &= info[i].tid != info[j].tid;
    }
    out("threads.errors", "%d", errors);
    out("threads.getpid==main_getpid", "%s", yesno(pid_same));
    out("threads.gettid!=getpid", "%s", yesno(tid_not_pid));
    out("threads.gettid_distinct", "%s", yesno(distinct));
    out("threads.own_fd_valid", "%s", yesno(fd_ok));
    out("main.gettid==getpid", "%s", yesno(main_tid == me));
    val("close.shared", close(shared_fd));

    /* per-thread files */
    for (int i = 0; i < NTHREADS; i++) {
        char name[32], buf[512];
        snprintf(name, sizeof name, "thread-%d.txt", i);
        ssize_t n = get_file(name, buf, sizeof buf);
        out_read(name, n, buf);
    }

    /* shared file: sorted lines (interleaving between threads is not fixed) */
    char buf[4096];
    ssize_t n = get_file("shared.log", buf, sizeof buf);
    if (n < 0)
        die("read shared.log");
    char *lines[128];
    int count = 0;
    int complete = n > 0 && buf[n - 1] == '\n';
    for (char *save = NULL, *tok = strtok_r(buf, "\n", &save); tok && count < 128;
         tok = strtok_r(NULL, "\n", &save))
        lines[count++] = tok;
    out("shared.first_line", "%s", count ? lines[0] : "");
    out("shared.bytes", "%zd", n);
    out("shared.line_count", "%d", count);
    out("shared.ends_with_newline", "%s", yesno(complete));
    /* within one thread, its own lines must be in order */
    int ordered = 1;
    for (int t = 0; t < NTHREADS; t++) {
        int last = -1;
        for (int i = 0; i < count; i++) {
            int tt, ll;
            if (sscanf(lines[i], "shared t%d l%d", &tt, &ll) == 2 && tt == t) {
                ordered &= ll == last + 1;
                last = ll;
            }
        }
    }
    out("shared.per_thread_order", "%s", yesno(ordered));
    qsort(lines, (size_t)count, sizeof lines[0], cmpstr);
    for (int i = 0; i < count; i++)
        out("shared.sorted", "%s", lines[i]);
    return 0;
}
