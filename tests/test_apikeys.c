/* test_apikeys.c - the API key file: what it accepts and refuses, that
 * errors never quote a key, that matching is exact, and the Authorization
 * header forms; plus a timing check that a near-miss costs what a far miss
 * costs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "genred/apikeys.h"

#define KEY_A "k1-0123456789abcdef"
#define KEY_B "Zx9/+=.~_-ABCDEFGHIJ"

static void write_temp(char path[64], const char *text, size_t len) {
    snprintf(path, 64, "/tmp/genred-test-keys-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
}

static apikeys *load_text(const char *text, size_t len, gr_err *err) {
    char path[64];
    write_temp(path, text, len);
    apikeys *k = apikeys_load(path, err);
    unlink(path);
    return k;
}

static void test_file_syntax(void **state) {
    (void)state;
    static const char text[] = "# genred keys\n"
                               "\n"
                               "   " KEY_A "  \r\n"
                               "\t# another comment\n"
                               KEY_B; /* no final newline */
    gr_err err = {0};
    apikeys *k = load_text(text, sizeof text - 1, &err);
    if (!k) fail_msg("refused: %s", err.msg);
    assert_int_equal(apikeys_count(k), 2);
    assert_true(apikeys_match(k, KEY_A, strlen(KEY_A)));
    assert_true(apikeys_match(k, KEY_B, strlen(KEY_B)));
    apikeys_free(k);
}

static void test_match_is_exact(void **state) {
    (void)state;
    static const char text[] = KEY_A "\n" KEY_B "\n";
    gr_err err = {0};
    apikeys *k = load_text(text, sizeof text - 1, &err);
    assert_non_null(k);
    const char *a = KEY_A;
    size_t n = strlen(a);
    assert_false(apikeys_match(k, a, n - 1));          /* a prefix */
    assert_false(apikeys_match(k, KEY_A "x", n + 1));   /* an extension */
    assert_false(apikeys_match(k, "", 0));
    assert_false(apikeys_match(k, NULL, 0));
    char flipped[64];
    for (size_t i = 0; i < n; i++) { /* every single-character change */
        memcpy(flipped, a, n);
        flipped[i] ^= 1;
        assert_false(apikeys_match(k, flipped, n));
    }
    /* A token with a NUL inside is not the key it starts with. */
    char nul[64];
    memcpy(nul, a, n);
    nul[n] = '\0';
    nul[n + 1] = 'x';
    assert_false(apikeys_match(k, nul, n + 2));
    char big[APIKEY_MAX_LEN + 2];
    memset(big, 'a', sizeof big);
    assert_false(apikeys_match(k, big, sizeof big));
    apikeys_free(k);
}

static void test_refused_files(void **state) {
    (void)state;
    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"", "no keys"},
        {"# only a comment\n\n", "no keys"},
        {KEY_A "\nshort-key\n", ":2: a key must be 16 to 256 characters long"},
        {"0123456789 abcdef\n", ":1: a key may hold only printable ASCII"},
        {"0123456789\x01" "abcdef\n", ":1: a key may hold only printable ASCII"},
        {"0123456789abcdef\xc3\xa9\n", ":1: a key may hold only printable ASCII"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gr_err err = {0};
        assert_null(load_text(bad[i].text, strlen(bad[i].text), &err));
        assert_int_equal(err.status, GR_EFILE);
        if (!strstr(err.msg, bad[i].msg)) fail_msg("case %zu: message '%s'", i, err.msg);
    }
    /* 257 characters: one too many. */
    char longkey[APIKEY_MAX_LEN + 2];
    memset(longkey, 'k', APIKEY_MAX_LEN + 1);
    longkey[APIKEY_MAX_LEN + 1] = '\n';
    gr_err err = {0};
    assert_null(load_text(longkey, sizeof longkey, &err));
    assert_non_null(strstr(err.msg, ":1: a key must be"));
    /* 256 is fine. */
    longkey[APIKEY_MAX_LEN] = '\n';
    apikeys *k = load_text(longkey, APIKEY_MAX_LEN + 1, &err);
    assert_non_null(k);
    assert_true(apikeys_match(k, longkey, APIKEY_MAX_LEN));
    apikeys_free(k);

    static const char nul[] = KEY_A "\nabc\0def0123456789\n";
    assert_null(load_text(nul, sizeof nul - 1, &err));
    assert_non_null(strstr(err.msg, ":2: NUL byte"));

    assert_null(apikeys_load("/nonexistent/genred.keys", &err));
    assert_int_equal(err.status, GR_EFILE);
    assert_non_null(strstr(err.msg, "cannot open"));
}

/* A key next to a bad line must not leak into the message. */
static void test_errors_never_quote_keys(void **state) {
    (void)state;
    static const char text[] = KEY_A "\n" KEY_B " trailing-part\n";
    gr_err err = {0};
    assert_null(load_text(text, sizeof text - 1, &err));
    assert_null(strstr(err.msg, "k1-0123"));
    assert_null(strstr(err.msg, "Zx9"));
    assert_null(strstr(err.msg, "trailing"));
}

static void test_header_forms(void **state) {
    (void)state;
    static const char text[] = KEY_A "\n";
    gr_err err = {0};
    apikeys *k = load_text(text, sizeof text - 1, &err);
    assert_non_null(k);
    assert_int_equal(apikeys_check_header(k, "Bearer " KEY_A), APIKEYS_OK);
    assert_int_equal(apikeys_check_header(k, "bearer   " KEY_A), APIKEYS_OK);
    assert_int_equal(apikeys_check_header(k, "BEARER " KEY_A), APIKEYS_OK);
    assert_int_equal(apikeys_check_header(k, NULL), APIKEYS_MISSING);
    assert_int_equal(apikeys_check_header(k, ""), APIKEYS_MISSING);
    assert_int_equal(apikeys_check_header(k, "Basic " KEY_A), APIKEYS_MISSING);
    assert_int_equal(apikeys_check_header(k, "Bearer" KEY_A), APIKEYS_MISSING);
    assert_int_equal(apikeys_check_header(k, KEY_A), APIKEYS_MISSING);
    assert_int_equal(apikeys_check_header(k, "Bearer "), APIKEYS_INVALID);
    assert_int_equal(apikeys_check_header(k, "Bearer wrong-key-0123456789"), APIKEYS_INVALID);
    assert_int_equal(apikeys_check_header(k, "Bearer " KEY_A " "), APIKEYS_INVALID);
    assert_int_equal(apikeys_check_header(k, "Bearer " KEY_A "x"), APIKEYS_INVALID);
    apikeys_free(k);
}

/* This thread's CPU time: being preempted by other work on a shared
 * machine does not count in it, where it would in wall time. */
static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds for `reps` checks of tok. */
static double time_checks(const apikeys *k, const char *tok, size_t n, int reps) {
    volatile int sink = 0;
    double t0 = thread_cpu_s();
    for (int i = 0; i < reps; i++) sink += apikeys_match(k, tok, n);
    (void)sink;
    return thread_cpu_s() - t0;
}

/* Constant time, measured: with an early-exit comparison a token that
 * matches all but the last character of a 256-character key would take many
 * times longer than one that differs in the first. Here the near miss may
 * cost at most a loose factor more than the far one (the machine is shared,
 * so only a gross leak can fail). Only that direction leaks: a far miss
 * that costs more says nothing about the key. */
static void test_time_does_not_depend_on_match_length(void **state) {
    (void)state;
    char key[APIKEY_MAX_LEN + 1];
    for (size_t i = 0; i < APIKEY_MAX_LEN; i++) key[i] = (char)('a' + i % 26);
    key[APIKEY_MAX_LEN] = '\n';
    gr_err err = {0};
    apikeys *k = load_text(key, sizeof key, &err);
    assert_non_null(k);
    char near[APIKEY_MAX_LEN], far[APIKEY_MAX_LEN];
    memcpy(near, key, APIKEY_MAX_LEN);
    near[APIKEY_MAX_LEN - 1] = 'Z';
    memcpy(far, key, APIKEY_MAX_LEN);
    far[0] = 'Z';
    /* The best of many interleaved runs of a few milliseconds each, in CPU
     * time: cache misses and a busy sibling core only ever add time, so the
     * minimum is the real cost, and interleaving gives both the same
     * conditions. */
    double t_near = 1e9, t_far = 1e9;
    for (int run = 0; run < 25; run++) {
        double a = time_checks(k, near, sizeof near, 100000);
        double b = time_checks(k, far, sizeof far, 100000);
        if (a < t_near) t_near = a;
        if (b < t_far) t_far = b;
    }
    apikeys_free(k);
    if (t_near > 1.5 * t_far)
        fail_msg("near miss %.3f ms vs far miss %.3f ms of CPU", t_near * 1e3, t_far * 1e3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_syntax),
        cmocka_unit_test(test_match_is_exact),
        cmocka_unit_test(test_refused_files),
        cmocka_unit_test(test_errors_never_quote_keys),
        cmocka_unit_test(test_header_forms),
        cmocka_unit_test(test_time_does_not_depend_on_match_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
