#include <stdio.h>
#include "proj.h"
const char *fmt_list(const long *v, int n) {
    static char buf[1024];
    int at = 0;
    for (int i = 0; i < n && at < 1000; i++) at += snprintf(buf + at, sizeof buf - at, i ? ",%ld" : "%ld", v[i]);
    buf[at] = 0;
    return buf;
}
