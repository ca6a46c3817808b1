/* ident: uname/gethostname/getdomainname, /proc/sys/kernel/{hostname,domainname},
 * uid/gid family, getpid/gettid/getppid/getpgrp/getsid relations across fork,
 * vfork, waitpid/waitid/wait4, kill, child exit statuses.
 *
 * The probe itself exits with status 42 (exit-status propagation check). */
#include "probe.h"
#include <grp.h>
#include <sys/resource.h>
#include <sys/utsname.h>

#define PROBE_EXIT_STATUS 42

struct report {
    pid_t pid, ppid, tid, pgrp, sid, extra;
};

static void show_file(const char *label, const char *path)
{
    char buf[256];
    ssize_t n = get_file(path, buf, sizeof buf);
    out_read(label, n, buf);
}

int main(int argc, char **argv)
{
    probe_init(argc, argv);

    /* host identity */
    struct utsname u;
    if (uname(&u) != 0)
        die("uname");
    out("uname.sysname", "%s", u.sysname);
    out("uname.nodename", "%s", u.nodename);
    out("uname.domainname", "%s", u.domainname);
    char host[256];
    if (gethostname(host, sizeof host) == 0)
        out("gethostname", "%s", host);
    else
        out("gethostname", "%s", errname(errno));
    out("gethostname==uname.nodename", "%s", yesno(strcmp(host, u.nodename) == 0));
    char small[2];
    res("gethostname.tiny_buffer", gethostname(small, sizeof small));
    char dom[256];
    if (getdomainname(dom, sizeof dom) == 0)
        out("getdomainname", "%s", dom);
    else
        out("getdomainname", "%s", errname(errno));
    show_file("proc.kernel_hostname", "/proc/sys/kernel/hostname");
    show_file("proc.kernel_domainname", "/proc/sys/kernel/domainname");

    /* credentials */
    out("getuid", "%u", (unsigned)getuid());
    out("geteuid", "%u", (unsigned)geteuid());
    out("getgid", "%u", (unsigned)getgid());
    out("getegid", "%u", (unsigned)getegid());
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    if (getresuid(&ru, &eu, &su) == 0)
        out("getresuid", "%u %u %u", (unsigned)ru, (unsigned)eu, (unsigned)su);
    if (getresgid(&rg, &eg, &sg) == 0)
        out("getresgid", "%u %u %u", (unsigned)rg, (unsigned)eg, (unsigned)sg);
    int ng = getgroups(0, NULL);
    out("getgroups.count", "%d", ng);
    gid_t groups[256];
    int ng2 = getgroups(256, groups);
    out("getgroups.count_again", "%d", ng2);
    if (ng > 0) {
        gid_t g1[1];
        int r = getgroups(ng > 1 ? 1 : 0, g1);
        out("getgroups.short_buffer", "%s", ng > 1 ? (r < 0 ? errname(errno) : "ok") : "n/a");
    }
    out("getgid_in_groups_or_empty", "%s", yesno(({
        int found = ng2 == 0;
        for (int i = 0; i < ng2; i++)
            found |= groups[i] == getgid();
        found;
    })));

    /* process identity */
    pid_t me = getpid();
    out("getpid==gettid_main", "%s", yesno(me == (pid_t)syscall(SYS_gettid)));
    out("getpid_stable", "%s", yesno(me == getpid()));
    out("getpgid0==getpgrp", "%s", yesno(getpgid(0) == getpgrp()));
    out("getpgid_self==getpgrp", "%s", yesno(getpgid(me) == getpgrp()));
    out("getsid0==getsid_self", "%s", yesno(getsid(0) == getsid(me)));
    out("getppid_positive", "%s", yesno(getppid() > 0));
    out("getppid!=getpid", "%s", yesno(getppid() != me));
    res("kill.self_sig0", kill(me, 0));

    /* fork: child reports its view through a pipe */
    int p[2];
    if (pipe(p) != 0)
        die("pipe");
    pid_t c = probe_fork();
    if (c < 0)
        die("fork");
    if (c == 0) {
        struct report r = {getpid(), getppid(), (pid_t)syscall(SYS_gettid), getpgrp(), getsid(0), 0};
        if (write(p[1], &r, sizeof r) != sizeof r)
            _exit(98);
        _exit(0);
    }
    struct report r;
    if (read_full(p[0], &r, sizeof r) != 0)
        die("read report");
    out("fork.ret==child_getpid", "%s", yesno(c == r.pid));
    out("fork.child_getppid==parent_getpid", "%s", yesno(r.ppid == me));
    out("fork.child_gettid==child_getpid", "%s", yesno(r.tid == r.pid));
    out("fork.child_pid!=parent_pid", "%s", yesno(r.pid != me));
    out("fork.child_pgrp==parent_pgrp", "%s", yesno(r.pgrp == getpgrp()));
    out("fork.child_sid==parent_sid", "%s", yesno(r.sid == getsid(0)));
    int st;
    pid_t w = waitpid(c, &st, 0);
    out("waitpid.ret==fork_ret", "%s", yesno(w == c));
    out("waitpid.status", "%s", wstatus(st));
    res("kill.reaped_child", kill(c, 0));
    out("waitpid.no_children", "%s", waitpid(-1, &st, WNOHANG) < 0 ? errname(errno) : "child?");

    /* grandchild: getppid() == the intermediate child's pid */
    c = probe_fork();
    if (c == 0) {
        pid_t mid = getpid();
        pid_t g = fork();
        if (g == 0) {
            struct report gr = {getpid(), getppid(), 0, 0, 0, mid};
            if (write(p[1], &gr, sizeof gr) != sizeof gr)
                _exit(98);
            _exit(0);
        }
        int gst;
        pid_t gw = waitpid(g, &gst, 0);
        struct report mr = {g, gw, 0, 0, 0, WIFEXITED(gst) ? WEXITSTATUS(gst) : -1};
        if (write(p[1], &mr, sizeof mr) != sizeof mr)
            _exit(98);
        _exit(0);
    }
    struct report gr, mr;
    if (read_full(p[0], &gr, sizeof gr) != 0 || read_full(p[0], &mr, sizeof mr) != 0)
        die("read grandchild reports");
    out("grandchild.getppid==child_getpid", "%s", yesno(gr.ppid == gr.extra));
    out("grandchild.child_pid==middle_ret", "%s", yesno(gr.extra == c));
    out("grandchild.fork_ret==grandchild_getpid", "%s", yesno(mr.pid == gr.pid));
    out("grandchild.waitpid_ret==fork_ret", "%s", yesno(mr.ppid == mr.pid));
    out("grandchild.exit", "%d", mr.extra);
    waitpid(c, &st, 0);
    out("middle.status", "%s", wstatus(st));

    /* setpgid / setsid in children */
    c = probe_fork();
    if (c == 0) {
        int ok = setpgid(0, 0) == 0 && getpgrp() == getpid() && getpgid(0) == getpid();
        _exit(ok ? 10 : 11);
    }
    waitpid(c, &st, 0);
    out("child.setpgid_makes_leader", "%s", wstatus(st));
    c = probe_fork();
    if (c == 0) {
        pid_t s = setsid();
        int ok = s == getpid() && getsid(0) == getpid() && getpgrp() == getpid();
        _exit(ok ? 20 : 21);
    }
    waitpid(c, &st, 0);
    out("child.setsid_makes_leader", "%s", wstatus(st));

    /* kill a child blocked in pause() */
    c = probe_fork();
    if (c == 0) {
        if (write(p[1], "R", 1) != 1)
            _exit(98);
        for (;;)
            pause();
    }
    char ready;
    if (read_full(p[0], &ready, 1) != 0)
        die("read ready");
    res("kill.alive_sig0", kill(c, 0));
    out("waitpid.wnohang_running", "%ld", (long)waitpid(c, &st, WNOHANG));
    res("kill.sigterm", kill(c, SIGTERM));
    w = waitpid(c, &st, 0);
    out("waitpid.killed.ret==fork_ret", "%s", yesno(w == c));
    out("waitpid.killed.status", "%s", wstatus(st));
    out("waitpid.killed.wtermsig_is_sigterm", "%s", yesno(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM));

    /* vfork + _exit */
    static volatile pid_t vchild_pid;
    c = vfork();
    if (c == 0) {
        vchild_pid = getpid();
        _exit(7);
    }
    w = waitpid(c, &st, 0);
    out("vfork.ret==child_getpid", "%s", yesno(c == vchild_pid));
    out("vfork.waitpid_ret==vfork_ret", "%s", yesno(w == c));
    out("vfork.status", "%s", wstatus(st));

    /* a range of exit statuses, through waitpid, waitid and wait4 */
    static const int codes[] = {0, 1, 2, 127, 128, 255, 256, 257};
    for (unsigned i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        c = probe_fork();
        if (c == 0)
            _exit(codes[i]);
        char label[64];
        snprintf(label, sizeof label, "exit.%d", codes[i]);
        if (i % 3 == 0) {
            w = waitpid(c, &st, 0);
            out(label, "waitpid %s ret_ok=%s", wstatus(st), yesno(w == c));
        } else if (i % 3 == 1) {
            siginfo_t si;
            memset(&si, 0, sizeof si);
            int rc = waitid(P_PID, (id_t)c, &si, WEXITED);
            out(label, "waitid rc=%d code=%s status=%d pid_ok=%s", rc,
                si.si_code == CLD_EXITED ? "CLD_EXITED" : "other", si.si_status,
                yesno(si.si_pid == c));
        } else {
            struct rusage ru_;
            w = wait4(c, &st, 0, &ru_);
            out(label, "wait4 %s ret_ok=%s", wstatus(st), yesno(w == c));
        }
    }
    static const int sigs[] = {SIGKILL, SIGTERM, SIGUSR1, SIGSEGV};
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        c = probe_fork();
        if (c == 0) {
            struct rlimit nocore = {0, 0};
            setrlimit(RLIMIT_CORE, &nocore); /* no core files in WORKDIR */
            signal(sigs[i], SIG_DFL);
            raise(sigs[i]);
            _exit(50);
        }
        w = waitpid(c, &st, 0);
        char label[64];
        snprintf(label, sizeof label, "raise.%s", signame(sigs[i]));
        out(label, "%s ret_ok=%s", wstatus(st), yesno(w == c));
    }
    c = probe_fork();
    if (c == 0)
        _exit(9);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int rc = waitid(P_ALL, 0, &si, WEXITED | WNOWAIT);
    out("waitid.wnowait", "rc=%d pid_ok=%s status=%d", rc, yesno(si.si_pid == c), si.si_status);
    w = waitpid(-1, &st, 0);
    out("waitpid.any_after_wnowait", "%s ret_ok=%s", wstatus(st), yesno(w == c));

    close(p[0]);
    close(p[1]);
    out("exit", "%d", PROBE_EXIT_STATUS);
    return PROBE_EXIT_STATUS;
}
