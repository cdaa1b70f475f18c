/* test_sockwatch.c - deadlines on sockets (sockwatch.h): a socket is shut
 * down once its armed deadline passes and not before; disarmed, re-armed
 * later or removed, it is left alone. Socket pairs stand in for
 * connections: the end the watcher shuts down reads end-of-file, as a
 * connection thread blocked on it would. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "genred/clock.h"
#include "genred/sockwatch.h"

/* Deadlines are this far out; checks look this long before and after. */
#define STEP_S 0.15

/* 1 when fd reads end-of-file within timeout_s, 0 when it stays open. */
static int reads_eof_within(int fd, double timeout_s) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)(timeout_s * 1000)) <= 0) return 0;
    char c;
    return recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

static void make_pair(int sv[2]) { assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0); }

static void test_cut_after_the_deadline_not_before(void **state) {
    (void)state;
    gr_err err;
    sockwatch *w = sockwatch_create(&err);
    assert_non_null(w);
    int sv[2];
    make_pair(sv);
    sockwatch_entry *e = sockwatch_add(w, sv[0]);
    assert_non_null(e);
    double t0 = monotonic_now();
    sockwatch_arm(w, e, t0 + 2 * STEP_S);
    assert_false(reads_eof_within(sv[0], STEP_S));
    assert_true(reads_eof_within(sv[0], 4 * STEP_S));
    assert_true(monotonic_now() - t0 >= 2 * STEP_S);
    /* The peer sees the connection end too. */
    assert_true(reads_eof_within(sv[1], STEP_S));
    assert_int_equal(sockwatch_disarm(w, e), 1);
    assert_int_equal(sockwatch_remove(w, e), 1);
    close(sv[0]);
    close(sv[1]);
    sockwatch_destroy(w);
}

static void test_disarmed_rearmed_and_removed_are_left_alone(void **state) {
    (void)state;
    gr_err err;
    sockwatch *w = sockwatch_create(&err);
    assert_non_null(w);
    int a[2], b[2], c[2];
    make_pair(a);
    make_pair(b);
    make_pair(c);
    sockwatch_entry *ea = sockwatch_add(w, a[0]);
    sockwatch_entry *eb = sockwatch_add(w, b[0]);
    sockwatch_entry *ec = sockwatch_add(w, c[0]);
    assert_true(ea && eb && ec);
    double t0 = monotonic_now();
    sockwatch_arm(w, ea, t0 + STEP_S);
    sockwatch_arm(w, eb, t0 + STEP_S);
    sockwatch_arm(w, ec, t0 + STEP_S);
    assert_int_equal(sockwatch_disarm(w, ea), 0);      /* a: disarmed in time */
    sockwatch_arm(w, eb, t0 + 4 * STEP_S);             /* b: pushed back */
    assert_int_equal(sockwatch_remove(w, ec), 0);      /* c: no longer watched */
    assert_false(reads_eof_within(a[0], 2 * STEP_S));
    assert_false(reads_eof_within(b[0], STEP_S / 2));
    assert_false(reads_eof_within(c[0], STEP_S / 2));
    assert_true(reads_eof_within(b[0], 4 * STEP_S));   /* b: at its new deadline */
    assert_false(reads_eof_within(a[0], 0));
    assert_int_equal(sockwatch_remove(w, ea), 0);
    assert_int_equal(sockwatch_remove(w, eb), 1);
    for (int i = 0; i < 2; i++) close(a[i]), close(b[i]), close(c[i]);
    sockwatch_destroy(w);
}

/* An earlier deadline armed while the thread sleeps until a later one must
 * wake it: the later one was armed first. */
static void test_earlier_deadline_wakes_the_watcher(void **state) {
    (void)state;
    gr_err err;
    sockwatch *w = sockwatch_create(&err);
    assert_non_null(w);
    enum { N = 32 };
    int sv[N][2];
    sockwatch_entry *e[N];
    double t0 = monotonic_now();
    for (int i = 0; i < N; i++) {
        make_pair(sv[i]);
        e[i] = sockwatch_add(w, sv[i][0]);
        assert_non_null(e[i]);
        /* The first one armed is the last due: 10 s, never reached here. */
        sockwatch_arm(w, e[i], i == 0 ? t0 + 10 : t0 + STEP_S + 0.001 * i);
    }
    for (int i = 1; i < N; i++) assert_true(reads_eof_within(sv[i][0], 4 * STEP_S));
    assert_true(monotonic_now() - t0 < 2.0);
    assert_false(reads_eof_within(sv[0][0], 0));
    for (int i = 0; i < N; i++) {
        assert_int_equal(sockwatch_remove(w, e[i]), i > 0);
        close(sv[i][0]);
        close(sv[i][1]);
    }
    sockwatch_destroy(w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cut_after_the_deadline_not_before),
        cmocka_unit_test(test_disarmed_rearmed_and_removed_are_left_alone),
        cmocka_unit_test(test_earlier_deadline_wakes_the_watcher),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
