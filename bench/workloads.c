/* Micro-workloads for bench/run.py. Each one times itself with CLOCK_MONOTONIC (through the
 * vDSO, so the timing adds no system call) and prints one line:
 *
 *     RESULT <workload> <value> <unit> <iterations>
 *
 * Several workloads can run in one process, separated by "+" arguments
 * (`workloads stat F 250 + clock 250`), so a tool with a slow start is started once.
 *
 * The per-call loops run for at least BUDGET_MS milliseconds (and at least a minimum number of
 * iterations), so a slow mode does not take minutes and a fast one is still timed over many
 * calls.
 *
 *   workloads stat   PATH BUDGET_MS      stat(PATH) in a loop                  -> us/call
 *   workloads stat1  DIR N               stat DIR/f0 .. DIR/f<N-1>, each once  -> us/call
 *   workloads stat1d DIR N               stat DIR/d0/f .. DIR/d<N-1>/f, each once -> us/call
 *   workloads seen   DIR N               see N changes `change` makes at home  -> worst ms
 *   workloads change DIR N               (at home, not timed) make those changes
 *   workloads orc    PATH BUDGET_MS      open + read 4 KiB + close             -> us/iteration
 *   workloads read   PATH                whole file, 1 MiB page-aligned reads  -> MB/s
 *   workloads write  PATH MIB [BS]       MIB MiB in BS-byte writes (1 MiB, page-aligned) -> MB/s
 *   workloads clock  BUDGET_MS           syscall(SYS_clock_gettime) in a loop  -> ns/call
 *   workloads rdzero BUDGET_MS           read 4 KiB from /dev/zero (a local fd) -> ns/call
 *   workloads pingpong BUDGET_MS         1-byte pipe round trip, two processes -> us/round trip
 *   workloads spawn  PROG BUDGET_MS      fork + exec PROG + wait               -> ms/spawn
 *   workloads fan    GO READY ROOT N K   job K of several: says READY/rK.PID, waits for GO, stats
 *                                        ROOT/jK/d0/f .. d<N-1>/f once each -> its wall-clock span
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024L * 1024L)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, const char *arg) {
    fprintf(stderr, "workloads: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
    exit(2);
}

static void *page_buffer(size_t size) {
    void *buf = NULL;
    if (posix_memalign(&buf, (size_t)sysconf(_SC_PAGESIZE), size) != 0) {
        errno = ENOMEM;
        die("posix_memalign", NULL);
    }
    memset(buf, 0x5a, size);
    return buf;
}

/* Runs `body` in batches of `batch` until `budget` seconds and `min_iter` iterations have
 * passed; returns seconds per iteration and the iteration count. */
#define TIMED_LOOP(budget, min_iter, batch, body, per_iter, count)            \
    do {                                                                      \
        long n_ = 0;                                                          \
        double t0_ = now(), el_ = 0;                                          \
        do {                                                                  \
            for (int b_ = 0; b_ < (batch); b_++) { body; }                    \
            n_ += (batch);                                                    \
            el_ = now() - t0_;                                                \
        } while (el_ < (budget) || n_ < (min_iter));                          \
        (per_iter) = el_ / (double)n_;                                        \
        (count) = n_;                                                         \
    } while (0)

static int w_stat(const char *tag, const char *path, double budget) {
    struct stat sb;
    double per;
    long n;
    if (stat(path, &sb) != 0) die("stat", path);
    TIMED_LOOP(budget, 20, 10, if (stat(path, &sb) != 0) die("stat", path), per, n);
    printf("RESULT %s %.4f us %ld\n", tag, per * 1e6, n);
    return 0;
}

/* The first stat of each of n files DIR/f0 ... : what a job pays for a name it has not
 * asked about yet (a cache that outlives one job would defeat it; qrun's does not). */
static int w_stat1(const char *tag, const char *dir, long n, const char *name_format) {
    struct stat sb;
    char path[4096];
    double t0 = now();
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, name_format, dir, i);
        if (stat(path, &sb) != 0) die("stat", path);
    }
    printf("RESULT %s %.4f us %ld\n", tag, (now() - t0) / (double)n * 1e6, n);
    return 0;
}

/* Coherence: how long after a change made at home (by `workloads change`, which runs
 * outside the tool) the job sees it. Each change appends its CLOCK_MONOTONIC time to
 * DIR/log, then one byte to DIR/flag; the job stats DIR/flag until its size moves and
 * reads that change's time from the log. Reports the worst of n changes, in ms. */
static long size_of(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

static double change_time(const char *log, long which) {
    FILE *f = fopen(log, "r");
    if (!f) die("fopen", log);
    double t = -1;
    for (long i = 1; i <= which && fscanf(f, "%lf", &t) == 1; i++)
        ;
    fclose(f);
    return t;
}

static int w_seen(const char *tag, const char *dir, long n) {
    char flag[4096], log[4096], ready[4096];
    snprintf(flag, sizeof flag, "%s/flag", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    snprintf(ready, sizeof ready, "%s/ready", dir);
    long have = size_of(flag);
    int fd = open(ready, O_WRONLY | O_CREAT, 0644);
    if (fd < 0) die("open", ready);
    close(fd);
    double worst = 0, t0 = now();
    while (have < n) {
        long size;
        while ((size = size_of(flag)) == have)
            if (now() - t0 > 60) die("waiting for a change of", flag);
        double seen = now(), made = change_time(log, size);
        if (made < 0) die("no time in", log);
        if (seen - made > worst) worst = seen - made;
        have = size;
    }
    printf("RESULT %s %.3f ms %ld\n", tag, worst * 1e3, n);
    return 0;
}

/* The other side of `seen`, run at home without the tool: n changes, 20 ms apart, once
 * the job said it is ready. */
static int w_change(const char *dir, long n) {
    char flag[4096], log[4096], ready[4096];
    snprintf(flag, sizeof flag, "%s/flag", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    snprintf(ready, sizeof ready, "%s/ready", dir);
    for (double t0 = now(); size_of(ready) < 0; usleep(1000))
        if (now() - t0 > 120) die("waiting for", ready);
    for (long i = 0; i < n; i++) {
        usleep(20000);
        char line[64];
        int len = snprintf(line, sizeof line, "%.9f\n", now());
        int lf = open(log, O_WRONLY | O_APPEND | O_CREAT, 0644), ff;
        if (lf < 0 || write(lf, line, (size_t)len) != len) die("append to", log);
        close(lf);
        ff = open(flag, O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (ff < 0 || write(ff, "x", 1) != 1) die("append to", flag);
        close(ff);
    }
    return 0;
}

static int w_orc(const char *tag, const char *path, double budget) {
    char *buf = page_buffer(4096);
    double per;
    long n;
#define ORC_BODY                                                               \
    do {                                                                       \
        int fd = open(path, O_RDONLY);                                         \
        if (fd < 0) die("open", path);                                         \
        if (read(fd, buf, 4096) != 4096) die("read", path);                    \
        close(fd);                                                             \
    } while (0)
    ORC_BODY;
    TIMED_LOOP(budget, 20, 10, ORC_BODY, per, n);
    printf("RESULT %s %.4f us %ld\n", tag, per * 1e6, n);
    return 0;
}

static int w_read(const char *tag, const char *path) {
    char *buf = page_buffer(MIB);
    double t0 = now();
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open", path);
    long total = 0;
    for (;;) {
        ssize_t r = read(fd, buf, MIB);
        if (r < 0) die("read", path);
        if (r == 0) break;
        total += r;
    }
    close(fd);
    double el = now() - t0;
    printf("RESULT %s %.1f MB/s %ld\n", tag, (double)total / el / 1e6, total / MIB);
    return 0;
}

static int w_write(const char *tag, const char *path, long mib, long bs) {
    char *buf = page_buffer(MIB);
    if (bs <= 0 || bs > MIB) die("block size", NULL);
    double t0 = now();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open", path);
    for (long left = mib * MIB; left > 0;) {
        ssize_t w = write(fd, buf, (size_t)(left < bs ? left : bs));
        if (w <= 0) die("write", path);
        left -= w;
    }
    if (close(fd) != 0) die("close", path);
    double el = now() - t0;
    printf("RESULT %s %.1f MB/s %ld\n", tag, (double)(mib * MIB) / el / 1e6, mib);
    return 0;
}

static int w_clock(const char *tag, double budget) {
    struct timespec ts;
    double per;
    long n;
    TIMED_LOOP(budget, 1000, 1000, syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts), per, n);
    printf("RESULT %s %.2f ns %ld\n", tag, per * 1e9, n);
    return 0;
}

static int w_rdzero(const char *tag, double budget) {
    char *buf = page_buffer(4096);
    double per;
    long n;
    int fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) die("open", "/dev/zero");
    TIMED_LOOP(budget, 1000, 100, if (read(fd, buf, 4096) != 4096) die("read", "/dev/zero"), per, n);
    close(fd);
    printf("RESULT %s %.2f ns %ld\n", tag, per * 1e9, n);
    return 0;
}

/* The machine's context-switch cost: everything that traps pays at least one of these. */
static int w_pingpong(const char *tag, double budget) {
    int a[2], b[2];
    char c = 0;
    double per;
    long n;
    if (pipe(a) != 0 || pipe(b) != 0) die("pipe", NULL);
    pid_t pid = fork();
    if (pid < 0) die("fork", NULL);
    if (pid == 0) {
        close(a[1]);
        close(b[0]);
        while (read(a[0], &c, 1) == 1 && write(b[1], &c, 1) == 1) {}
        _exit(0);
    }
    close(a[0]);
    close(b[1]);
    TIMED_LOOP(budget, 100, 100,
               if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1) die("pipe", NULL), per, n);
    close(a[1]);
    waitpid(pid, NULL, 0);
    printf("RESULT %s %.3f us %ld\n", tag, per * 1e6, n);
    return 0;
}

static void spawn_once(const char *prog) {
    pid_t pid = fork();
    if (pid < 0) die("fork", NULL);
    if (pid == 0) {
        execl(prog, prog, (char *)NULL);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0) die("waitpid", NULL);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "workloads: %s failed (status %d)\n", prog, status);
        exit(2);
    }
}

static int w_spawn(const char *tag, const char *prog, double budget) {
    double per;
    long n;
    spawn_once(prog);
    TIMED_LOOP(budget, 5, 1, spawn_once(prog), per, n);
    printf("RESULT %s %.3f ms %ld\n", tag, per * 1e3, n);
    return 0;
}

/* One of several jobs run at once (bench/measure.py starts them): it says it is ready
 * (READY/rK.PID, made), waits until GO exists, then makes N first stats, one per directory
 * of its own tree (none answered by a listing or a cache). It prints the CLOCK_REALTIME
 * span of that work, which the harness adds up over the jobs: calls per second in total
 * while they all ran. */
static int w_fan(const char *tag, const char *go, const char *ready, const char *root, long n,
                 long k) {
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s/r%ld.%d", ready, k, (int)getpid());   /* (a new name each run) */
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd < 0) die("open", path);
    close(fd);
    for (double t0 = now(); stat(go, &sb) != 0; usleep(1000))
        if (now() - t0 > 120) die("waiting for", go);
    struct timespec a, b;
    clock_gettime(CLOCK_REALTIME, &a);
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/j%ld/d%ld/f", root, k, i);
        if (stat(path, &sb) != 0) die("stat", path);
    }
    clock_gettime(CLOCK_REALTIME, &b);
    double start = (double)a.tv_sec + (double)a.tv_nsec * 1e-9;
    double end = (double)b.tv_sec + (double)b.tv_nsec * 1e-9;
    printf("RESULT %s %.6f s %ld %.6f %.6f\n", tag, end - start, n, start, end);
    return 0;
}

/* Runs one workload: args[0] is its name, n the number of arguments. */
static int dispatch(char **a, int n) {
    const char *w = a[0];
    if (!strcmp(w, "stat") && n == 3) return w_stat(w, a[1], atof(a[2]) / 1e3);
    if (!strcmp(w, "seen") && n == 3) return w_seen(w, a[1], atol(a[2]));
    if (!strcmp(w, "change") && n == 3) return w_change(a[1], atol(a[2]));
    if (!strcmp(w, "stat1") && n == 3) return w_stat1(w, a[1], atol(a[2]), "%s/f%ld");
    if (!strcmp(w, "stat1d") && n == 3) return w_stat1(w, a[1], atol(a[2]), "%s/d%ld/f");
    if (!strcmp(w, "orc") && n == 3) return w_orc(w, a[1], atof(a[2]) / 1e3);
    if (!strcmp(w, "read") && n == 2) return w_read(w, a[1]);
    if (!strcmp(w, "write") && (n == 3 || n == 4)) return w_write(w, a[1], atol(a[2]), n == 4 ? atol(a[3]) : MIB);
    if (!strcmp(w, "clock") && n == 2) return w_clock(w, atof(a[1]) / 1e3);
    if (!strcmp(w, "rdzero") && n == 2) return w_rdzero(w, atof(a[1]) / 1e3);
    if (!strcmp(w, "pingpong") && n == 2) return w_pingpong(w, atof(a[1]) / 1e3);
    if (!strcmp(w, "spawn") && n == 3) return w_spawn(w, a[1], atof(a[2]) / 1e3);
    if (!strcmp(w, "fan") && n == 6) return w_fan(w, a[1], a[2], a[3], atol(a[4]), atol(a[5]));
    fprintf(stderr, "workloads: bad arguments for %s\n", w);
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: workloads NAME ARGS... [+ NAME ARGS...]...\n"
                        "  NAME: stat|stat1|stat1d|seen|change|orc|read|write|clock|rdzero|pingpong|spawn|fan\n");
        return 2;
    }
    int start = 1;
    for (int i = 1; i <= argc; i++) {
        if (i == argc || !strcmp(argv[i], "+")) {
            if (i > start) {
                int rc = dispatch(argv + start, i - start);
                fflush(stdout);
                if (rc != 0) return rc;
            }
            start = i + 1;
        }
    }
    return 0;
}
