/* sockwatch.c - deadlines on sockets (sockwatch.h).
 *
 * The entries are a list under one mutex; the watcher thread scans it for
 * deadlines that passed, shuts their sockets down, and sleeps until the
 * earliest deadline left. A scan is linear: the list holds one entry per
 * open connection (a few hundred), and a scan runs only when a deadline
 * passes or an earlier one is armed.
 *
 * Shutting down under the mutex is what makes it safe: an entry's fd stays
 * open until its owner has removed the entry (sockwatch.h), so the watcher
 * never touches a number that was closed and reused meanwhile.
 *
 * What it does not do: anything but shutdown(2) to a socket. */
#include "genred/sockwatch.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "genred/clock.h"

struct sockwatch_entry {
    int fd;
    double deadline;            /* 0: disarmed */
    int cut;                    /* shut down by a deadline */
    sockwatch_entry *prev, *next;
};

struct sockwatch {
    pthread_mutex_t mu;         /* guards everything below */
    pthread_cond_t wake;        /* CLOCK_MONOTONIC */
    pthread_t thread;
    sockwatch_entry *head;
    double wake_at;             /* when the thread wakes next; 0: not before signalled */
    int stopping;
};

/* Shuts down the sockets whose deadline passed; returns the earliest
 * deadline left, 0 if none. Called with mu held. */
static double cut_overdue(sockwatch *w, double now) {
    double next = 0;
    for (sockwatch_entry *e = w->head; e; e = e->next) {
        if (e->deadline <= 0) continue;
        if (e->deadline <= now) {
            shutdown(e->fd, SHUT_RDWR);
            e->cut = 1;
            e->deadline = 0;
        } else if (next == 0 || e->deadline < next) {
            next = e->deadline;
        }
    }
    return next;
}

static void *watch_main(void *arg) {
    sockwatch *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stopping) {
        w->wake_at = cut_overdue(w, monotonic_now());
        if (w->wake_at > 0) {
            struct timespec until = monotonic_timespec(w->wake_at);
            pthread_cond_timedwait(&w->wake, &w->mu, &until);
        } else {
            pthread_cond_wait(&w->wake, &w->mu);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

sockwatch *sockwatch_create(gr_err *err) {
    sockwatch *w = calloc(1, sizeof *w);
    if (!w) {
        gr_fail(err, GR_EINTERNAL, "sockwatch: out of memory");
        return NULL;
    }
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        gr_fail(err, GR_EINTERNAL, "sockwatch: mutex init failed");
        return NULL;
    }
    if (monotonic_cond_init(&w->wake) != 0) {
        pthread_mutex_destroy(&w->mu);
        free(w);
        gr_fail(err, GR_EINTERNAL, "sockwatch: condvar init failed");
        return NULL;
    }
    if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->mu);
        free(w);
        gr_fail(err, GR_EINTERNAL, "sockwatch: cannot start its thread");
        return NULL;
    }
    return w;
}

void sockwatch_destroy(sockwatch *w) {
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    /* Entries left are the owner's bug; free them rather than leak. */
    for (sockwatch_entry *e = w->head, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

sockwatch_entry *sockwatch_add(sockwatch *w, int fd) {
    sockwatch_entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->fd = fd;
    pthread_mutex_lock(&w->mu);
    e->next = w->head;
    if (w->head) w->head->prev = e;
    w->head = e;
    pthread_mutex_unlock(&w->mu);
    return e;
}

void sockwatch_arm(sockwatch *w, sockwatch_entry *e, double deadline) {
    pthread_mutex_lock(&w->mu);
    e->deadline = deadline > 0 ? deadline : 1e-9;
    /* The thread sleeps until wake_at: wake it only if this comes first. */
    if (w->wake_at == 0 || e->deadline < w->wake_at) pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->mu);
}

int sockwatch_disarm(sockwatch *w, sockwatch_entry *e) {
    pthread_mutex_lock(&w->mu);
    e->deadline = 0;
    int cut = e->cut;
    pthread_mutex_unlock(&w->mu);
    return cut;
}

int sockwatch_remove(sockwatch *w, sockwatch_entry *e) {
    pthread_mutex_lock(&w->mu);
    if (e->prev) e->prev->next = e->next;
    else w->head = e->next;
    if (e->next) e->next->prev = e->prev;
    int cut = e->cut;
    pthread_mutex_unlock(&w->mu);
    free(e);
    return cut;
}
