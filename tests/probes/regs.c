/* regs: the x86-64 syscall ABI keeps rdi, rsi, rdx, r10, r8 and r9 across a system call, and
 * code built with inline `syscall` (musl, Go, static binaries) relies on it. Calls qrun
 * rewrites before the kernel runs them (an open turned into openat of a local copy, pids
 * translated for kill and wait4) must still leave every argument register as the job set it. */
#include "probe.h"

#if defined(__x86_64__)
/* Arguments past the call's own are canaries: the kernel ignores them. */
static void check(const char *name, long nr, long a0, long a1, long a2, long a3)
{
    long in[6] = { a0, a1, a2, a3, 0x5252525252, 0x5353535353 };
    register long r10 __asm__("r10") = in[3];
    register long r8 __asm__("r8") = in[4];
    register long r9 __asm__("r9") = in[5];
    long rax = nr, rdi = in[0], rsi = in[1], rdx = in[2];
    __asm__ volatile("syscall"
                     : "+a"(rax), "+D"(rdi), "+S"(rsi), "+d"(rdx), "+r"(r10), "+r"(r8), "+r"(r9)
                     :
                     : "rcx", "r11", "memory");
    long after[6] = { rdi, rsi, rdx, r10, r8, r9 };
    char what[64];
    snprintf(what, sizeof what, "%s.result", name);
    out(what, "%s", rax < 0 ? errname((int)-rax) : "ok");
    int changed = 0;
    for (int i = 0; i < 6; i++)
        if (after[i] != in[i])
            changed |= 1 << i;
    snprintf(what, sizeof what, "%s.registers", name);
    out(what, changed ? "changed (mask %#x)" : "kept", changed);
    if (rax >= 0 && (nr == SYS_open || nr == SYS_openat))
        close((int)rax);
}
#endif

int main(int argc, char **argv)
{
    probe_init(argc, argv);
#if defined(__x86_64__)
    put_file("f", "regs\n");
    check("open", SYS_open, (long)"f", O_RDONLY, 0, 0x51);
    check("openat", SYS_openat, AT_FDCWD, (long)"f", O_RDONLY, 0);
    check("open.missing", SYS_open, (long)"missing", O_RDONLY, 0, 0x51);
    check("kill.self", SYS_kill, getpid(), 0, 0x50, 0x51);
    pid_t child = fork();
    if (child == 0)
        _exit(3);
    if (child < 0)
        die("fork");
    int st = 0;
    check("wait4.child", SYS_wait4, child, (long)&st, 0, 0);
    out("wait4.status", "%d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
#else
    out("regs", "not checked on this architecture");
#endif
    return 0;
}
