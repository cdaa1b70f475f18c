/* sockwatch.h - deadlines on sockets that another thread is blocked on.
 *
 * A watched socket whose armed deadline passes is shut down (shutdown(2),
 * both directions) by the watcher's own thread: whatever thread waits on it
 * in poll() or recv() then sees end-of-file and gives up, and the peer sees
 * the connection end. That is how a deadline reaches a thread we do not
 * run: libmicrohttpd's connection threads, while they read a request's
 * header block (http.c), have no deadline of their own, only an idle
 * timeout that every byte restarts.
 *
 * One thread sleeps until the earliest armed deadline; arming, disarming
 * and removing take a mutex and never wait for that thread.
 *
 * What it does not do: close a socket (its owner does, after
 * sockwatch_remove()), or say anything to the peer. */
#ifndef GENRED_SOCKWATCH_H
#define GENRED_SOCKWATCH_H

#include "genred/err.h"

typedef struct sockwatch sockwatch;
typedef struct sockwatch_entry sockwatch_entry;

/* Starts the watcher thread. Caller owns the result; sockwatch_destroy()
 * it once every entry is removed. NULL (GR_EINTERNAL) on failure. */
sockwatch *sockwatch_create(gr_err *err);
void sockwatch_destroy(sockwatch *w);

/* Watches fd, disarmed. The entry belongs to w until sockwatch_remove();
 * fd must stay open until then (its owner closes it after). NULL when out
 * of memory. Thread-safe. */
sockwatch_entry *sockwatch_add(sockwatch *w, int fd);

/* Sets e's deadline (a monotonic_now() time), replacing any earlier one.
 * Thread-safe. */
void sockwatch_arm(sockwatch *w, sockwatch_entry *e, double deadline);

/* Clears e's deadline. Returns 1 if the deadline had already passed and
 * the socket was shut down, else 0. Thread-safe. */
int sockwatch_disarm(sockwatch *w, sockwatch_entry *e);

/* Stops watching and frees e. Returns 1 if its socket was shut down by a
 * deadline at any time, else 0. Thread-safe. */
int sockwatch_remove(sockwatch *w, sockwatch_entry *e);

#endif
