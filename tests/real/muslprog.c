/* A musl-static C program for tests/test_real_programs.py: file I/O, a sorted directory
 * listing, stat, rename, links, and fork + exec + wait. It prints only what is the same
 * natively and under qrun (no inode numbers, times or pids). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what) {
    printf("error: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) die("opendir");
    char *names[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmp);
    printf("ls %s:", dir);
    for (int i = 0; i < n; i++) {
        char p[512];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        if (lstat(p, &st)) die("lstat");
        printf(" %s(%c%o,%lld,%ld)", names[i], S_ISDIR(st.st_mode) ? 'd' : S_ISLNK(st.st_mode) ? 'l' : 'f',
               (unsigned)(st.st_mode & 07777), (long long)(S_ISDIR(st.st_mode) ? 0 : st.st_size),
               (long)(S_ISDIR(st.st_mode) ? 0 : st.st_nlink));
        free(names[i]);
    }
    printf("\n");
}

int main(int argc, char **argv) {
    char cwd[512];
    if (!getcwd(cwd, sizeof cwd)) die("getcwd");
    printf("cwd %s\n", cwd);
    if (argc > 1 && strcmp(argv[1], "again") == 0) {  /* exec'd by itself below */
        list("m");
        return 4;
    }
    if (mkdir("m", 0750)) die("mkdir");
    int fd = open("m/data.txt", O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) die("open");
    for (int i = 0; i < 500; i++) dprintf(fd, "record %d\n", i);
    if (pwrite(fd, "RECORD", 6, 0) != 6) die("pwrite");
    if (fsync(fd)) die("fsync");
    close(fd);

    FILE *f = fopen("m/data.txt", "r");
    if (!f) die("fopen");
    char line[64];
    long sum = 0, count = 0;
    while (fgets(line, sizeof line, f)) { sum += strlen(line); count++; }
    fclose(f);
    printf("read %ld lines %ld bytes\n", count, sum);

    fd = open("m/data.txt", O_RDWR);
    if (fd < 0) die("open rw");
    if (lseek(fd, -11, SEEK_END) < 0) die("lseek");
    char tail[16] = {0};
    if (read(fd, tail, 11) != 11) die("read");
    if (ftruncate(fd, 100)) die("ftruncate");
    struct stat st;
    if (fstat(fd, &st)) die("fstat");
    close(fd);
    printf("tail %.10s size-after-truncate %lld mode %o\n", tail, (long long)st.st_size,
           (unsigned)(st.st_mode & 07777));

    if (rename("m/data.txt", "m/renamed.txt")) die("rename");
    if (link("m/renamed.txt", "m/hardlink")) die("link");
    if (symlink("renamed.txt", "m/sym")) die("symlink");
    char target[64] = {0};
    if (readlink("m/sym", target, sizeof target - 1) < 0) die("readlink");
    printf("readlink %s\n", target);
    if (chmod("m/renamed.txt", 0604)) die("chmod");
    if (mkdir("m/sub", 0700) || mkdir("m/gone", 0755) || rmdir("m/gone")) die("mkdir/rmdir");
    int rc = access("m/nope", F_OK), err = errno;
    printf("access-missing %d errno %s\n", rc, strerror(err));
    list("m");

    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        int out = open("m/sub/child.out", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (out < 0) _exit(100);
        dup2(out, 1);
        close(out);
        execl("/bin/sh", "sh", "-c", "head -c 20 m/renamed.txt; echo; pwd; exit 7", (char *)0);
        _exit(101);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) die("waitpid");
    printf("child exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        execl(argv[0], argv[0], "again", (char *)0);
        _exit(102);
    }
    if (waitpid(pid, &status, 0) != pid) die("waitpid 2");
    printf("self exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    list("m/sub");
    return 6;
}
