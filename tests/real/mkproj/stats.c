#include "proj.h"
long stats_sum(const long *v, int n) { long s = 0; for (int i = 0; i < n; i++) s += v[i]; return s; }
double stats_mean(const long *v, int n) { return n ? (double)stats_sum(v, n) / n : 0.0; }
