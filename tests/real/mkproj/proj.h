#include "version.h"
int parse_args(int argc, char **argv, long *out, int max);
void table_sort(long *v, int n);
long stats_sum(const long *v, int n);
double stats_mean(const long *v, int n);
const char *fmt_list(const long *v, int n);
