#include <stdio.h>
#include "proj.h"
int main(int argc, char **argv) {
    long v[64];
    int n = parse_args(argc, argv, v, 64);
    table_sort(v, n);
    printf("proj %s: n=%d sorted=%s sum=%ld mean=%.3f\n", PROJ_VERSION, n, fmt_list(v, n),
           stats_sum(v, n), stats_mean(v, n));
    return 0;
}
