/* Types shared by the C source and the cffi declarations: build.py puts this text in front
 * of both, so each is defined once. */

struct qr_regs {
    long nr;                    /* syscall number at a seccomp stop */
    unsigned long args[6];
    unsigned long sp;
    unsigned long ip;
    long ret;                   /* return-value register */
};
