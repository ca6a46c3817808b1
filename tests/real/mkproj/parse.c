#include <stdlib.h>
#include "proj.h"
int parse_args(int argc, char **argv, long *out, int max) {
    int n = 0;
    for (int i = 1; i < argc && n < max; i++) out[n++] = strtol(argv[i], 0, 10);
    return n;
}
