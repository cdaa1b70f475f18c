/* clock.h - the one clock genred measures time with: CLOCK_MONOTONIC, in
 * seconds.
 *
 * Deadlines (request_timeout_s), the durations in logs, metrics and answers,
 * and the timed waits on condition variables all read this clock, so a time
 * taken in one module can be compared with one taken in another. Seconds as
 * a double keep well under a microsecond of resolution for years of uptime.
 *
 * What it does not do: wall-clock time (genred needs no date; http.c reads
 * CLOCK_REALTIME only as entropy for request ids). */
#ifndef GENRED_CLOCK_H
#define GENRED_CLOCK_H

#include <pthread.h>
#include <time.h>

/* Now, in seconds since an arbitrary fixed point. Thread-safe. */
double monotonic_now(void);

/* The moment t (a monotonic_now() value) as an absolute timespec, for
 * pthread_cond_timedwait() on a condition variable made by
 * monotonic_cond_init(). */
struct timespec monotonic_timespec(double t);

/* pthread_cond_init() for a condition variable whose timed waits count on
 * this clock. Returns 0, or -1 (nothing to destroy). */
int monotonic_cond_init(pthread_cond_t *c);

#endif
