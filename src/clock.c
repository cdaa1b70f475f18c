/* clock.c - the one clock genred measures time with (clock.h). */
#include "genred/clock.h"

double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct timespec monotonic_timespec(double t) {
    struct timespec ts = {0, 0};
    if (!(t > 0)) return ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec > 999999999) ts.tv_nsec = 999999999;
    return ts;
}

int monotonic_cond_init(pthread_cond_t *c) {
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) return -1;
    int ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 && pthread_cond_init(c, &ca) == 0;
    pthread_condattr_destroy(&ca);
    return ok ? 0 : -1;
}
