#include "proj.h"
void table_sort(long *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) { long t = v[j]; v[j] = v[j - 1]; v[j - 1] = t; }
}
