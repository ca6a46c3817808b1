/* exec: execve of a copy of the probe binary in WORKDIR/bin, a #!/bin/sh
 * script (its $0), execvp through PATH=WORKDIR/bin, execve failures
 * (ENOENT, EACCES, ENOEXEC), pid/argv/envp across execve, exit status.
 *
 * Re-exec mode: selfcopy --exit3 EXPECTED_PID  (prints lines, exits 3). */
#include "probe.h"
#include <limits.h>

extern char **environ;

static int exit3_mode(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    out("selfcopy.argv0", "%s", argv[0]);
    out("selfcopy.argc", "%d", argc);
    pid_t expected = argc > 2 ? (pid_t)atol(argv[2]) : -1;
    out("selfcopy.getpid==pre_exec_getpid", "%s", yesno(getpid() == expected));
    const char *v = getenv("QRUN_PROBE_VAR");
    out("selfcopy.env", "%s", v ? v : "(unset)");
    out("selfcopy.env_count", "%d", ({ int n = 0; for (char **e = environ; *e; e++) n++; n; }));
    char cwd[PATH_MAX];
    out("selfcopy.cwd_inherited", "%s", yesno(getcwd(cwd, sizeof cwd) && strcmp(cwd, argc > 3 ? argv[3] : "") == 0));
    fflush(stdout);
    return 3;
}

/* fork, run fn in the child (which must exec or _exit), wait, print status */
static void run_child(const char *label, void (*fn)(void *), void *arg)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        die("pipe2");
    pid_t c = probe_fork();
    if (c < 0)
        die("fork");
    if (c == 0) {
        close(p[0]);
        fn(arg);
        int e = errno;
        /* exec failed: report errno through the CLOEXEC pipe */
        if (write(p[1], &e, sizeof e) != sizeof e)
            _exit(98);
        _exit(127);
    }
    close(p[1]);
    int e = 0;
    ssize_t n = read(p[0], &e, sizeof e);
    close(p[0]);
    int st;
    pid_t w = waitpid(c, &st, 0);
    char name[96];
    snprintf(name, sizeof name, "%s.exec_result", label);
    out(name, "%s", n == sizeof e ? errname(e) : "exec_succeeded");
    snprintf(name, sizeof name, "%s.status", label);
    out(name, "%s waitpid_ok=%s", wstatus(st), yesno(w == c));
}

struct execve_args {
    const char *path;
    char **argv;
    char **envp;
};

static void do_execve(void *a)
{
    struct execve_args *x = a;
    execve(x->path, x->argv, x->envp);
}

static void do_execvp(void *a)
{
    struct execve_args *x = a;
    execvp(x->path, x->argv);
}

static void do_selfcopy_with_pid(void *a)
{
    const char *path = a;
    char pidbuf[32];
    snprintf(pidbuf, sizeof pidbuf, "%ld", (long)getpid());
    char *args[] = {"selfcopy", "--exit3", pidbuf, (char *)probe_workdir, NULL};
    char *envp[] = {"QRUN_PROBE_VAR=from-envp", "OTHER=1", NULL};
    execve(path, args, envp);
}

static void copy_file(const char *src, const char *dst, mode_t mode)
{
    int in = open(src, O_RDONLY);
    if (in < 0)
        die("open %s", src);
    int o = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (o < 0)
        die("create %s", dst);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (write(o, buf, (size_t)n) != n)
            die("write %s", dst);
    if (n < 0)
        die("read %s", src);
    close(in);
    if (close(o) != 0)
        die("close %s", dst);
    if (chmod(dst, mode) != 0)
        die("chmod %s", dst);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--exit3") == 0)
        return exit3_mode(argc, argv);
    probe_init(argc, argv);
    if (!*probe_self)
        die("need SELF as argv[2]");
    umask(022);

    res("mkdir.bin", mkdir("bin", 0755));
    copy_file(probe_self, "bin/selfcopy", 0755);
    struct stat st;
    if (stat("bin/selfcopy", &st) == 0)
        out("selfcopy.mode", "%04o", st.st_mode & 07777);

    char abs_selfcopy[PATH_MAX];
    snprintf(abs_selfcopy, sizeof abs_selfcopy, "%s/bin/selfcopy", probe_workdir);

    /* execve of the copied binary: absolute and relative path */
    run_child("execve.selfcopy_abs", do_selfcopy_with_pid, abs_selfcopy);
    run_child("execve.selfcopy_rel", do_selfcopy_with_pid, "bin/selfcopy");
    run_child("execve.selfcopy_dotslash", do_selfcopy_with_pid, "./bin/selfcopy");

    /* #!/bin/sh script: $0 is the path given to execve */
    put_file("script.sh",
             "#!/bin/sh\n"
             "echo \"script.dollar0: $0\"\n"
             "echo \"script.argc: $#\"\n"
             "echo \"script.args: $*\"\n"
             "echo \"script.var: ${QRUN_PROBE_VAR-unset}\"\n"
             "echo \"script.pwd: $(pwd)\"\n"
             "exit 4\n");
    res("chmod.script", chmod("script.sh", 0755));
    char abs_script[PATH_MAX];
    snprintf(abs_script, sizeof abs_script, "%s/script.sh", probe_workdir);
    char *sargv[] = {"ignored-argv0", "one", "two words", NULL};
    char *senv[] = {"QRUN_PROBE_VAR=script-env", "PATH=/usr/bin:/bin", NULL};
    struct execve_args sa = {abs_script, sargv, senv};
    run_child("execve.script_abs", do_execve, &sa);
    struct execve_args sr = {"./script.sh", sargv, senv};
    run_child("execve.script_rel", do_execve, &sr);

    /* script with an interpreter argument */
    put_file("script2", "#!/bin/sh -e\necho \"script2.dollar0: $0\"\nfalse\necho not-reached\n");
    res("chmod.script2", chmod("script2", 0755));
    struct execve_args s2 = {"script2", sargv, senv};
    run_child("execve.script_with_arg", do_execve, &s2);

    /* execvp through PATH=WORKDIR/bin */
    put_file("bin/hello", "#!/bin/sh\necho \"hello.dollar0: $0\"\necho \"hello.args: $*\"\n");
    res("chmod.hello", chmod("bin/hello", 0755));
    char path_env[PATH_MAX + 8];
    snprintf(path_env, sizeof path_env, "%s/bin", probe_workdir);
    char *saved_path = getenv("PATH") ? strdup(getenv("PATH")) : NULL;
    setenv("PATH", path_env, 1);
    char *hargv[] = {"hello", "via-path", NULL};
    struct execve_args hp = {"hello", hargv, NULL};
    run_child("execvp.hello", do_execvp, &hp);
    char *margv[] = {"no-such-command", NULL};
    struct execve_args mp = {"no-such-command", margv, NULL};
    run_child("execvp.missing", do_execvp, &mp);
    /* execvp falls back to /bin/sh for a file without #! (ENOEXEC) */
    put_file("bin/nohashbang", "echo \"nohashbang.ran: yes\"\nexit 6\n");
    res("chmod.nohashbang", chmod("bin/nohashbang", 0755));
    char *nargv[] = {"nohashbang", NULL};
    struct execve_args np = {"nohashbang", nargv, NULL};
    run_child("execvp.nohashbang", do_execvp, &np);
    if (saved_path)
        setenv("PATH", saved_path, 1);
    else
        unsetenv("PATH");
    free(saved_path);

    /* failures */
    char *fargv[] = {"x", NULL};
    char *fenv[] = {NULL};
    struct execve_args f1 = {"does-not-exist", fargv, fenv};
    run_child("execve.missing", do_execve, &f1);
    put_file("noexec.sh", "#!/bin/sh\necho should-not-run\n");
    res("chmod.noexec_0644", chmod("noexec.sh", 0644));
    struct execve_args f2 = {"./noexec.sh", fargv, fenv};
    run_child("execve.mode_0644", do_execve, &f2);
    put_file("garbage", "this is not an executable\n");
    res("chmod.garbage", chmod("garbage", 0755));
    struct execve_args f3 = {"./garbage", fargv, fenv};
    run_child("execve.garbage_0755", do_execve, &f3);
    struct execve_args f4 = {"bin", fargv, fenv};
    run_child("execve.directory", do_execve, &f4);
    put_file("badinterp", "#!/nonexistent/interpreter\n");
    res("chmod.badinterp", chmod("badinterp", 0755));
    struct execve_args f5 = {"./badinterp", fargv, fenv};
    run_child("execve.missing_interpreter", do_execve, &f5);
    struct execve_args f6 = {"bin/selfcopy/x", fargv, fenv};
    run_child("execve.notdir", do_execve, &f6);
    return 0;
}
