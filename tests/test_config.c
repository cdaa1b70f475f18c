/* test_config.c - settings: defaults, strict values, conf files, GENRED_*
 * variables, print/load round trip, and the shipped conf/genred.conf. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "genred/config.h"

extern char **environ;

static void assert_config_equal(const config *a, const config *b) {
    assert_string_equal(a->listen, b->listen);
    assert_int_equal(a->port, b->port);
    assert_int_equal(a->ops_port, b->ops_port);
    assert_string_equal(a->model, b->model);
    assert_int_equal(a->workers, b->workers);
    assert_int_equal(a->max_batch, b->max_batch);
    assert_int_equal(a->queue_capacity, b->queue_capacity);
    assert_int_equal(a->max_upload_bytes, b->max_upload_bytes);
    assert_int_equal(a->max_upload_memory, b->max_upload_memory);
    assert_true(a->max_duration_s == b->max_duration_s);
    assert_true(a->trim_start_s == b->trim_start_s);
    assert_true(a->trim_end_s == b->trim_end_s);
    assert_true(a->trim_min_keep_s == b->trim_min_keep_s);
    assert_int_equal(a->max_chunks, b->max_chunks);
    assert_int_equal(a->max_connections, b->max_connections);
    assert_int_equal(a->max_connections_per_client, b->max_connections_per_client);
    assert_int_equal(a->max_active_requests, b->max_active_requests);
    assert_int_equal(a->idle_timeout_s, b->idle_timeout_s);
    assert_true(a->header_timeout_s == b->header_timeout_s);
    assert_int_equal(a->min_upload_rate, b->min_upload_rate);
    assert_true(a->request_timeout_s == b->request_timeout_s);
    assert_true(a->shutdown_timeout_s == b->shutdown_timeout_s);
    assert_string_equal(a->api_keys_file, b->api_keys_file);
    assert_string_equal(a->cors_origins, b->cors_origins);
    assert_string_equal(a->tls_cert_file, b->tls_cert_file);
    assert_string_equal(a->tls_key_file, b->tls_key_file);
    assert_int_equal(a->log_level, b->log_level);
    assert_string_equal(a->fftw_wisdom, b->fftw_wisdom);
}

/* Writes len bytes to a fresh temporary file; path receives its name. */
static void write_temp(char path[64], const char *text, size_t len) {
    snprintf(path, 64, "/tmp/genred-test-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
}

/* Loads text as a conf file over the defaults; returns config_load_file's
 * result, with the path stripped from the message so tests can compare it. */
static int load_text(config *c, const char *text, gr_err *err) {
    char path[64];
    write_temp(path, text, strlen(text));
    config_defaults(c);
    int rc = config_load_file(c, path, err);
    if (rc < 0) {
        size_t n = strlen(path);
        assert_memory_equal(err->msg, path, n);
        memmove(err->msg, err->msg + n, strlen(err->msg + n) + 1);
    }
    unlink(path);
    return rc;
}

static void test_defaults(void **state) {
    (void)state;
    config c;
    config_defaults(&c);
    assert_string_equal(c.listen, "127.0.0.1");
    assert_int_equal(c.port, 8080);
    assert_int_equal(c.ops_port, -1);
    /* The installed model under the prefix meson was configured with. */
    assert_string_equal(c.model, GENRED_DEFAULT_MODEL);
    assert_true(c.model[0] == '/');
    const char *tail = "/genred/models/gtzan-cnn.gmodel";
    assert_true(strlen(c.model) > strlen(tail));
    assert_string_equal(c.model + strlen(c.model) - strlen(tail), tail);
    assert_int_equal(c.workers, 0);
    assert_int_equal(c.max_batch, 8);
    assert_int_equal(c.queue_capacity, 64);
    assert_int_equal(c.max_upload_bytes, 64u << 20);
    assert_int_equal(c.max_upload_memory, 256u << 20);
    assert_true(c.max_duration_s == 1200);
    assert_true(c.trim_start_s == 15);
    assert_true(c.trim_end_s == 15);
    assert_true(c.trim_min_keep_s == 30);
    assert_int_equal(c.max_chunks, 0);
    assert_int_equal(c.max_connections, 256);
    assert_int_equal(c.max_connections_per_client, 0);
    assert_int_equal(c.max_active_requests, 0);
    assert_int_equal(c.idle_timeout_s, 30);
    assert_true(c.header_timeout_s == 10);
    assert_int_equal(c.min_upload_rate, 1024);
    assert_true(c.request_timeout_s == 60);
    assert_true(c.shutdown_timeout_s == 30);
    assert_string_equal(c.api_keys_file, "");
    assert_string_equal(c.tls_cert_file, "");
    assert_string_equal(c.tls_key_file, "");
    assert_string_equal(c.fftw_wisdom, "");
    assert_int_equal(c.log_level, LOG_LEVEL_INFO);
    assert_string_equal(log_level_name(c.log_level), "info");
}

static void set_ok(config *c, const char *key, const char *value) {
    gr_err err = {0};
    if (config_set(c, key, value, &err) != 0)
        fail_msg("config_set(%s, '%s') refused: %s", key, value, err.msg);
}

static void test_set_every_key(void **state) {
    (void)state;
    config c;
    config_defaults(&c);
    set_ok(&c, "listen", "::1");
    assert_string_equal(c.listen, "::1");
    set_ok(&c, "listen", "0.0.0.0");
    assert_string_equal(c.listen, "0.0.0.0");
    set_ok(&c, "port", "0");
    assert_int_equal(c.port, 0);
    set_ok(&c, "port", "65535");
    assert_int_equal(c.port, 65535);
    set_ok(&c, "ops_port", "0");
    assert_int_equal(c.ops_port, 0);
    set_ok(&c, "ops-port", "9090");
    assert_int_equal(c.ops_port, 9090);
    set_ok(&c, "ops_port", "off");
    assert_int_equal(c.ops_port, -1);
    set_ok(&c, "max_upload_memory", "1G");
    assert_int_equal(c.max_upload_memory, (size_t)1 << 30);
    set_ok(&c, "max_connections_per_client", "16");
    assert_int_equal(c.max_connections_per_client, 16);
    set_ok(&c, "header_timeout_s", "2.5");
    assert_true(c.header_timeout_s == 2.5);
    set_ok(&c, "min_upload_rate", "0");
    assert_int_equal(c.min_upload_rate, 0);
    set_ok(&c, "min_upload_rate", "4K");
    assert_int_equal(c.min_upload_rate, 4096);
    set_ok(&c, "queue_capacity", "0");
    assert_int_equal(c.queue_capacity, 0);
    set_ok(&c, "model", "/srv/models/other model.gmodel");
    assert_string_equal(c.model, "/srv/models/other model.gmodel");
    set_ok(&c, "workers", "256");
    assert_int_equal(c.workers, 256);
    set_ok(&c, "max_batch", "1024");
    assert_int_equal(c.max_batch, 1024);
    set_ok(&c, "max-batch", "7");
    assert_int_equal(c.max_batch, 7);
    set_ok(&c, "queue_capacity", "1000000");
    assert_int_equal(c.queue_capacity, 1000000);
    set_ok(&c, "max_upload_bytes", "123");
    assert_int_equal(c.max_upload_bytes, 123);
    set_ok(&c, "max-upload-bytes", "1K");
    assert_int_equal(c.max_upload_bytes, 1024);
    set_ok(&c, "max_upload_bytes", "3m");
    assert_int_equal(c.max_upload_bytes, 3u << 20);
    set_ok(&c, "max_upload_bytes", "4G");
    assert_int_equal(c.max_upload_bytes, (size_t)4 << 30);
    set_ok(&c, "max_duration_s", "90.5");
    assert_true(c.max_duration_s == 90.5);
    set_ok(&c, "trim_start_s", ".25");
    assert_true(c.trim_start_s == 0.25);
    set_ok(&c, "trim_end_s", "0");
    assert_true(c.trim_end_s == 0);
    set_ok(&c, "trim_min_keep_s", "1e2");
    assert_true(c.trim_min_keep_s == 100);
    set_ok(&c, "max-chunks", "8");
    assert_int_equal(c.max_chunks, 8);
    set_ok(&c, "max_connections", "1");
    assert_int_equal(c.max_connections, 1);
    set_ok(&c, "idle-timeout-s", "600");
    assert_int_equal(c.idle_timeout_s, 600);
    set_ok(&c, "request_timeout_s", "0");
    assert_true(c.request_timeout_s == 0);
    set_ok(&c, "request-timeout-s", "0.25");
    assert_true(c.request_timeout_s == 0.25);
    set_ok(&c, "shutdown_timeout_s", "3600");
    assert_true(c.shutdown_timeout_s == 3600);
    set_ok(&c, "shutdown_timeout_s", "0");
    assert_true(c.shutdown_timeout_s == 0);
    set_ok(&c, "api_keys_file", "/etc/genred/keys");
    assert_string_equal(c.api_keys_file, "/etc/genred/keys");
    set_ok(&c, "api-keys-file", ""); /* optional paths may be emptied again */
    assert_string_equal(c.api_keys_file, "");
    set_ok(&c, "cors_origins", "https://app.example.com, http://127.0.0.1:3000 http://[::1]:8000");
    assert_string_equal(c.cors_origins,
                        "https://app.example.com, http://127.0.0.1:3000 http://[::1]:8000");
    set_ok(&c, "cors-origins", "*");
    set_ok(&c, "cors_origins", "");
    assert_string_equal(c.cors_origins, "");
    set_ok(&c, "tls_cert_file", "/etc/genred/cert.pem");
    assert_string_equal(c.tls_cert_file, "/etc/genred/cert.pem");
    set_ok(&c, "tls_key_file", "key.pem");
    assert_string_equal(c.tls_key_file, "key.pem");
    set_ok(&c, "fftw_wisdom", "/var/cache/genred/fftw-wisdom");
    assert_string_equal(c.fftw_wisdom, "/var/cache/genred/fftw-wisdom");
    for (size_t i = 0; i < 4; i++) {
        static const char *const levels[] = {"error", "warn", "info", "debug"};
        set_ok(&c, "log_level", levels[i]);
        assert_int_equal(c.log_level, (log_level)i); /* ordered: each adds to the last */
        assert_string_equal(log_level_name(c.log_level), levels[i]);
    }

    /* The longest path that fits. */
    char path[4096];
    memset(path, 'a', sizeof path - 1);
    path[sizeof path - 1] = '\0';
    set_ok(&c, "model", path);
    assert_string_equal(c.model, path);
}

static void test_bad_values_refused(void **state) {
    (void)state;
    static char long_path[5000];
    memset(long_path, 'p', sizeof long_path - 1);
    static const struct {
        const char *key, *value;
    } bad[] = {
        {"listen", ""},           {"listen", "localhost"},
        {"listen", "127.0.0.1 "}, {"listen", "[::1]"},
        {"listen", "1.2.3.4:80"}, {"listen", "256.0.0.1"},
        {"port", ""},             {"port", "-1"},
        {"port", "65536"},        {"port", "80x"},
        {"port", " 80"},          {"port", "+80"},
        {"port", "0x50"},         {"port", "99999999999999999999999"},
        {"model", ""},            {"model", "a\nb"},
        {"model", "tab\there"},   {"workers", "257"},
        {"workers", "-1"},        {"workers", "1.5"},
        {"max_batch", "0"},       {"max_batch", "1025"},
        {"max_batch", "abc"},     {"ops_port", "65536"},
        {"ops_port", "-1"},       {"ops_port", "Off"},
        {"ops_port", ""},         {"max_upload_memory", "0"},
        {"max_upload_memory", "2048G"}, {"max_connections_per_client", "-1"},
        {"header_timeout_s", "0"}, {"header_timeout_s", "0.4"},
        {"header_timeout_s", "3601"}, {"min_upload_rate", "2G"},
        {"min_upload_rate", "-1"},
        {"queue_capacity", "1000001"}, {"queue_capacity", "1K"},
        {"max_upload_bytes", "0"}, {"max_upload_bytes", "5G"},
        {"max_upload_bytes", "1T"}, {"max_upload_bytes", "K"},
        {"max_upload_bytes", "1KB"}, {"max_upload_bytes", "-1"},
        {"max_upload_bytes", "18014398509481984G"},
        {"max_upload_bytes", "1 M"}, {"max_duration_s", "0"},
        {"max_duration_s", "86401"}, {"max_duration_s", "nan"},
        {"max_duration_s", "inf"}, {"max_duration_s", "-5"},
        {"max_duration_s", "10s"}, {"max_duration_s", "0x10"},
        {"max_duration_s", "."},  {"max_duration_s", "1e"},
        {"max_duration_s", "1e999"}, {"trim_start_s", "3601"},
        {"trim_start_s", ""},     {"trim_end_s", "-0.5"},
        {"trim_min_keep_s", "1,5"}, {"max_chunks", "-1"},
        {"max_chunks", "100001"}, {"max_chunks", "8.5"}, {"max_connections", "0"},
        {"max_connections", "65537"}, {"idle_timeout_s", "0"},
        {"idle_timeout_s", "86401"}, {"request_timeout_s", "-1"},
        {"request_timeout_s", "86401"}, {"request_timeout_s", "1m"},
        {"shutdown_timeout_s", "3601"}, {"shutdown_timeout_s", ""},
        {"api_keys_file", "a\nb"}, {"tls_cert_file", "x\x7f"},
        {"tls_key_file", "\t"},  {"log_level", "DEBUG"},
        {"log_level", "trace"},   {"log_level", ""},
        {"log_level", "info "},
        /* Origins a browser never sends as written: they would never match. */
        {"cors_origins", "app.example.com"}, {"cors_origins", "https://app.example.com/"},
        {"cors_origins", "https://App.example.com"}, {"cors_origins", "HTTPS://a.example"},
        {"cors_origins", "https://a.example:443"}, {"cors_origins", "http://a.example:80"},
        {"cors_origins", "http://a.example:0"}, {"cors_origins", "http://a.example:65536"},
        {"cors_origins", "http://a.example:08080"}, {"cors_origins", "http://a.example:"},
        {"cors_origins", "ftp://a.example"},  {"cors_origins", "null"},
        {"cors_origins", "https://a.example, *"}, {"cors_origins", "http://[::1"},
        {"cors_origins", "http://[]"},        {"cors_origins", "http://a.example;b"},
        {"cors_origins", "http://a\nhttp://b"}, {"cors_origins", "https://"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        config c, before;
        config_defaults(&c);
        config_defaults(&before);
        gr_err err = {0};
        if (config_set(&c, bad[i].key, bad[i].value, &err) != -1)
            fail_msg("config_set(%s, '%s') accepted", bad[i].key, bad[i].value);
        assert_int_equal(err.status, GR_ECONFIG);
        /* The message names the key; the value stays untouched. */
        assert_memory_equal(err.msg, bad[i].key, strlen(bad[i].key));
        assert_config_equal(&c, &before);
    }

    config c;
    config_defaults(&c);
    gr_err err = {0};
    assert_int_equal(config_set(&c, "model", long_path, &err), -1);
    assert_non_null(strstr(err.msg, "too long"));
    assert_int_equal(config_set(&c, "listen", "1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb:cccc:dddd", &err), -1);
}

static void test_error_messages(void **state) {
    (void)state;
    config c;
    config_defaults(&c);
    gr_err err = {0};
    assert_int_equal(config_set(&c, "max_batch", "abc", &err), -1);
    assert_string_equal(err.msg, "max_batch: expected an integer in 1..1024, got 'abc'");
    assert_int_equal(config_set(&c, "max_upload_bytes", "5G", &err), -1);
    assert_string_equal(err.msg,
                        "max_upload_bytes: expected a byte count in 1..4G (suffix K, M or G allowed), got '5G'");
    assert_int_equal(config_set(&c, "trim_end_s", "-1", &err), -1);
    assert_string_equal(err.msg, "trim_end_s: expected seconds in 0..3600, got '-1'");
    assert_int_equal(config_set(&c, "log_level", "loud", &err), -1);
    assert_string_equal(err.msg, "log_level: expected one of error, warn, info, debug, got 'loud'");

    assert_int_equal(config_set(&c, "max_bach", "4", &err), -1);
    assert_int_equal(err.status, GR_ECONFIG);
    assert_string_equal(err.msg, "unknown key 'max_bach'");
    assert_int_equal(config_set(&c, "", "4", &err), -1);
    assert_int_equal(config_set(&c, "MAX_BATCH", "4", &err), -1);
    assert_int_equal(config_set(&c, NULL, "4", &err), -1);
    assert_int_equal(config_set(&c, "port", NULL, &err), -1);

    /* Control characters in a quoted bad value cannot reach a log line. */
    assert_int_equal(config_set(&c, "port", "1\n2", &err), -1);
    assert_null(strchr(err.msg, '\n'));
    assert_non_null(strstr(err.msg, "'1?2'"));
}

static void test_file_syntax(void **state) {
    (void)state;
    config c;
    gr_err err = {0};
    int rc = load_text(&c,
                       "# full-line comment\n"
                       "\n"
                       "   \t\n"
                       "  port=9090   # trailing comment\n"
                       "\tmax-batch\t=\t16\t\n"
                       "model = \"/m/a # not a comment \\\"q\\\" \\\\x.gmodel\"  # comment\n"
                       "listen = '::1'\n"
                       "log_level = \"debug\"\r\n"
                       "max_upload_bytes = 128M\n"
                       "trim_start_s = 2.5\n"
                       "port = 9091\n", /* later lines win */
                       &err);
    if (rc != 0) fail_msg("load failed: %s", err.msg);
    assert_int_equal(c.port, 9091);
    assert_int_equal(c.max_batch, 16);
    assert_string_equal(c.model, "/m/a # not a comment \"q\" \\x.gmodel");
    assert_string_equal(c.listen, "::1");
    assert_int_equal(c.log_level, LOG_LEVEL_DEBUG);
    assert_int_equal(c.max_upload_bytes, 128u << 20);
    assert_true(c.trim_start_s == 2.5);
    assert_int_equal(c.workers, 0); /* untouched keys keep their value */

    /* '#' not after whitespace is part of the value; single quotes are
     * literal; a relative path is joined to the file's folder (/tmp). */
    rc = load_text(&c, "model = a#b\\c\nlisten='127.0.0.1'#x\n", &err);
    if (rc != 0) fail_msg("load failed: %s", err.msg);
    assert_string_equal(c.model, "/tmp/a#b\\c");

    /* A byte order mark, an empty file and a last line without newline. */
    rc = load_text(&c, "\xEF\xBB\xBFport = 1", &err);
    if (rc != 0) fail_msg("load failed: %s", err.msg);
    assert_int_equal(c.port, 1);
    assert_int_equal(load_text(&c, "", &err), 0);
}

static void test_file_errors(void **state) {
    (void)state;
    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"port = 1\n\nport 2\n", ":3: expected 'key = value'"},
        {"= 5\n", ":1: missing key before '='"},
        {"# c\nmax_batch = abc\n", ":2: max_batch: expected an integer in 1..1024, got 'abc'"},
        {"port = 8080x # c\n", ":1: port: expected an integer in 0..65535, got '8080x'"},
        {"port = 1\nprot = 2\n", ":2: unknown key 'prot'"},
        {"model = \"abc\n", ":1: unterminated quoted value"},
        {"model = 'abc\n", ":1: unterminated quoted value"},
        {"model = \"a\" b\n", ":1: text after the closing quote"},
        {"model = \"a\\nb\"\n", ":1: unknown escape in quoted value (only \\\" and \\\\)"},
        {"model =\n", ":1: model: expected a path, got ''"},
        {"model = # nothing\n", ":1: model: expected a path, got ''"},
        {"model = \"\"\n", ":1: model: expected a path, got ''"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        config c;
        gr_err err = {0};
        assert_int_equal(load_text(&c, bad[i].text, &err), -1);
        assert_int_equal(err.status, GR_ECONFIG);
        assert_string_equal(err.msg, bad[i].msg);
    }

    /* Over-long line: refused by line number, not truncated into a value. */
    size_t n = 20000;
    char *text = malloc(n + 32);
    assert_non_null(text);
    strcpy(text, "port = 1\nmodel = ");
    size_t off = strlen(text);
    memset(text + off, 'x', n);
    strcpy(text + off + n, "\n");
    config c;
    gr_err err = {0};
    assert_int_equal(load_text(&c, text, &err), -1);
    assert_string_equal(err.msg, ":2: line longer than 16384 bytes");
    free(text);

    /* A NUL byte would silently cut the line short. */
    char path[64];
    write_temp(path, "port = 80\0 garbage\n", 19);
    config_defaults(&c);
    assert_int_equal(config_load_file(&c, path, &err), -1);
    assert_non_null(strstr(err.msg, ":1: NUL byte"));
    unlink(path);

    /* Unreadable files. */
    assert_int_equal(config_load_file(&c, "/nonexistent/genred.conf", &err), -1);
    assert_int_equal(err.status, GR_EFILE);
    assert_non_null(strstr(err.msg, "/nonexistent/genred.conf: cannot open"));
    assert_int_equal(config_load_file(&c, "/tmp", &err), -1);
    assert_int_equal(err.status, GR_EFILE);
    assert_non_null(strstr(err.msg, "/tmp"));
}

/* The GENRED_ variables of this process (meson test sets some for the
 * harness), removed for the test and put back after it. */
typedef struct stash {
    char *vars[64];
    size_t n;
} stash;

static void stash_genred_env(stash *st) {
    st->n = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "GENRED_", 7) == 0 && st->n < 64) st->vars[st->n++] = strdup(*e);
    for (size_t i = 0; i < st->n; i++) {
        assert_non_null(st->vars[i]);
        char name[128];
        size_t k = strcspn(st->vars[i], "=");
        assert_true(k < sizeof name);
        memcpy(name, st->vars[i], k);
        name[k] = '\0';
        assert_int_equal(unsetenv(name), 0);
    }
}

static void restore_env(stash *st) {
    for (size_t i = 0; i < st->n; i++) {
        char *eq = strchr(st->vars[i], '=');
        *eq = '\0';
        assert_int_equal(setenv(st->vars[i], eq + 1, 1), 0);
        free(st->vars[i]);
    }
}

static void test_env(void **state) {
    (void)state;
    stash harness;
    stash_genred_env(&harness);
    config c, expect;
    gr_err err = {0};
    config_defaults(&c);
    config_defaults(&expect);
    expect.port = 9000;
    expect.max_upload_bytes = 2u << 20;
    expect.log_level = LOG_LEVEL_DEBUG;

    assert_int_equal(setenv("GENRED_PORT", "9000", 1), 0);
    assert_int_equal(setenv("GENRED_MAX_UPLOAD_BYTES", "2M", 1), 0);
    assert_int_equal(setenv("GENRED_LOG_LEVEL", "debug", 1), 0);
    /* Not a setting: the conf path, which main() reads. */
    assert_int_equal(setenv("GENRED_CONFIG", "/nonexistent.conf", 1), 0);
    if (config_load_env(&c, &err) != 0) fail_msg("load_env: %s", err.msg);
    assert_config_equal(&c, &expect);

    /* Production parsing knows no test harness: the harness's names are
     * unknown settings like any other (so the harness removes them before
     * it starts genred). */
    assert_int_equal(setenv("GENRED_BIN", "x", 1), 0);
    assert_int_equal(config_load_env(&c, &err), -1);
    assert_int_equal(err.status, GR_ECONFIG);
    assert_string_equal(err.msg, "environment: unknown setting GENRED_BIN");
    assert_int_equal(unsetenv("GENRED_BIN"), 0);

    /* A typo must not pass silently. */
    assert_int_equal(setenv("GENRED_MAX_BACH", "4", 1), 0);
    assert_int_equal(config_load_env(&c, &err), -1);
    assert_int_equal(err.status, GR_ECONFIG);
    assert_string_equal(err.msg, "environment: unknown setting GENRED_MAX_BACH");
    assert_int_equal(unsetenv("GENRED_MAX_BACH"), 0);
    assert_int_equal(setenv("GENRED_", "4", 1), 0);
    assert_int_equal(config_load_env(&c, &err), -1);
    assert_int_equal(unsetenv("GENRED_"), 0);
    assert_int_equal(setenv("GENRED_CONFIGS", "x", 1), 0);
    assert_int_equal(config_load_env(&c, &err), -1);
    assert_string_equal(err.msg, "environment: unknown setting GENRED_CONFIGS");
    assert_int_equal(unsetenv("GENRED_CONFIGS"), 0);

    /* A bad value names the variable and the key. */
    assert_int_equal(setenv("GENRED_PORT", "http", 1), 0);
    assert_int_equal(config_load_env(&c, &err), -1);
    assert_string_equal(err.msg,
                        "environment GENRED_PORT: port: expected an integer in 0..65535, got 'http'");

    unsetenv("GENRED_PORT");
    unsetenv("GENRED_MAX_UPLOAD_BYTES");
    unsetenv("GENRED_LOG_LEVEL");
    unsetenv("GENRED_CONFIG");
    restore_env(&harness);
}

/* Prints c, loads the text over the defaults, expects c back. */
/* Printed, then read back as a conf file from the working directory (a
 * relative path in a file elsewhere would name a file beside it). */
static void assert_round_trip(const config *c) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    config_print(c, f);
    assert_int_equal(fclose(f), 0);
    char path[64], cwd[4096];
    write_temp(path, text, strlen(text));
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir("/tmp"), 0);
    config back;
    config_defaults(&back);
    gr_err err = {0};
    int rc = config_load_file(&back, path + strlen("/tmp/"), &err);
    assert_int_equal(chdir(cwd), 0);
    unlink(path);
    if (rc != 0) fail_msg("reload failed: %s\n%s", err.msg, text);
    assert_config_equal(&back, c);
    free(text);
}

static void test_print_round_trip(void **state) {
    (void)state;
    config c;
    config_defaults(&c);
    assert_round_trip(&c);

    /* Every key differs from its default, so a key that config_print()
     * forgot would come back as the default and fail. */
    set_ok(&c, "listen", "fe80::1");
    set_ok(&c, "port", "0");
    set_ok(&c, "ops_port", "9191");
    set_ok(&c, "model", " #odd \"path\" with \\ and 'quotes' ");
    set_ok(&c, "workers", "3");
    set_ok(&c, "max_batch", "5");
    set_ok(&c, "queue_capacity", "7");
    set_ok(&c, "max_upload_bytes", "1536K");
    set_ok(&c, "max_upload_memory", "3000001");
    set_ok(&c, "max_duration_s", "1.1");
    set_ok(&c, "trim_start_s", "0.1");
    set_ok(&c, "trim_end_s", "1e-7");
    set_ok(&c, "trim_min_keep_s", "33.333333333333336");
    set_ok(&c, "max_connections", "9");
    set_ok(&c, "max_connections_per_client", "4");
    set_ok(&c, "max_active_requests", "6");
    set_ok(&c, "idle_timeout_s", "11");
    set_ok(&c, "header_timeout_s", "0.75");
    set_ok(&c, "min_upload_rate", "3M");
    set_ok(&c, "request_timeout_s", "2.5");
    set_ok(&c, "shutdown_timeout_s", "0.5");
    set_ok(&c, "api_keys_file", "/k # keys");
    set_ok(&c, "cors_origins", "http://127.0.0.1:3000 https://a.example");
    set_ok(&c, "tls_cert_file", "c.pem");
    set_ok(&c, "tls_key_file", "'k.pem'");
    set_ok(&c, "log_level", "error");
    assert_round_trip(&c);

    set_ok(&c, "model", "\"");
    set_ok(&c, "max_upload_bytes", "1000001");
    assert_round_trip(&c);
    set_ok(&c, "model", "'x'");
    assert_round_trip(&c);

    /* The printed form reads as a conf file line by line. */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    config_defaults(&c);
    config_print(&c, f);
    assert_int_equal(fclose(f), 0);
    assert_non_null(strstr(text, "max_upload_bytes = 64M\n"));
    assert_non_null(strstr(text, "listen = 127.0.0.1\n"));
    assert_non_null(strstr(text, "trim_start_s = 15\n"));
    assert_non_null(strstr(text, "api_keys_file = \"\"\n"));
    free(text);
}

/* TLS needs both files; config_set() sees one key at a time, so the pair is
 * checked afterwards. */
static void test_validate(void **state) {
    (void)state;
    config c;
    gr_err err = {0};
    config_defaults(&c);
    assert_int_equal(config_validate(&c, &err), 0);
    set_ok(&c, "tls_cert_file", "cert.pem");
    assert_int_equal(config_validate(&c, &err), -1);
    assert_int_equal(err.status, GR_ECONFIG);
    assert_non_null(strstr(err.msg, "tls_cert_file and tls_key_file"));
    set_ok(&c, "tls_key_file", "key.pem");
    assert_int_equal(config_validate(&c, &err), 0);
    set_ok(&c, "tls_cert_file", "");
    assert_int_equal(config_validate(&c, &err), -1);
}

/* cors_origins matches an Origin header byte for byte, one listed origin
 * at a time; "*" matches any; "" none. */
static void test_origin_allowed(void **state) {
    (void)state;
    config c;
    config_defaults(&c);
    assert_false(config_origin_allowed(&c, "https://app.example.com"));
    set_ok(&c, "cors_origins", " https://app.example.com,http://127.0.0.1:3000 ,\thttp://[::1]:8 ");
    static const char *const yes[] = {"https://app.example.com", "http://127.0.0.1:3000",
                                      "http://[::1]:8"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) assert_true(config_origin_allowed(&c, yes[i]));
    static const char *const no[] = {"", "https://app.example.co", "https://app.example.com.evil",
                                     "http://app.example.com", "http://127.0.0.1:300",
                                     "http://127.0.0.1:30000", "https://app.example.com,", "null",
                                     "http://[::1]:80", "*"};
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        if (config_origin_allowed(&c, no[i])) fail_msg("'%s' allowed", no[i]);
    assert_false(config_origin_allowed(&c, NULL));
    set_ok(&c, "cors_origins", "*");
    assert_true(config_origin_allowed(&c, "https://anywhere.example"));
    assert_false(config_origin_allowed(&c, ""));
}

/* Relative paths in a conf file name files beside it; elsewhere (flags,
 * the environment) they stay relative to the working directory. */
static void test_paths_relative_to_the_file(void **state) {
    (void)state;
    char dir[] = "/tmp/genred-test-rel-XXXXXX", cwd[4096];
    assert_non_null(mkdtemp(dir));
    assert_non_null(getcwd(cwd, sizeof cwd));
    char path[4200];
    snprintf(path, sizeof path, "%s/genred.conf", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("model = ../models/m.gmodel\napi_keys_file = keys\ntls_cert_file = /abs/cert.pem\n"
          "tls_key_file = './k #1.pem'\nfftw_wisdom = \"\"\n", f);
    assert_int_equal(fclose(f), 0);
    config c;
    config_defaults(&c);
    gr_err err = {0};
    if (config_load_file(&c, path, &err) != 0) fail_msg("%s", err.msg);
    char want[4300];
    snprintf(want, sizeof want, "%s/../models/m.gmodel", dir);
    assert_string_equal(c.model, want);
    snprintf(want, sizeof want, "%s/keys", dir);
    assert_string_equal(c.api_keys_file, want);
    assert_string_equal(c.tls_cert_file, "/abs/cert.pem");
    snprintf(want, sizeof want, "%s/./k #1.pem", dir);
    assert_string_equal(c.tls_key_file, want);
    assert_string_equal(c.fftw_wisdom, "");
    assert_int_equal(c.port, 8080); /* other kinds untouched */

    /* A conf file named relative to the working directory: still beside it. */
    assert_int_equal(chdir("/tmp"), 0);
    snprintf(path, sizeof path, "%s/genred.conf", dir + strlen("/tmp/"));
    config_defaults(&c);
    if (config_load_file(&c, path, &err) != 0) fail_msg("%s", err.msg);
    snprintf(want, sizeof want, "%s/../models/m.gmodel", dir + strlen("/tmp/"));
    assert_string_equal(c.model, want);
    /* In the working directory itself: as written. */
    assert_int_equal(chdir(dir), 0);
    config_defaults(&c);
    if (config_load_file(&c, "genred.conf", &err) != 0) fail_msg("%s", err.msg);
    assert_string_equal(c.model, "../models/m.gmodel");
    /* Flags and the environment do not join anything. */
    set_ok(&c, "model", "rel/m.gmodel");
    assert_string_equal(c.model, "rel/m.gmodel");

    /* Too long once joined: refused, not cut. */
    char text[4200] = "model = ";
    memset(text + 8, 'x', 4080);
    strcpy(text + 8 + 4080, "\n");
    f = fopen("genred.conf", "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    snprintf(path, sizeof path, "%s/genred.conf", dir);
    assert_int_equal(config_load_file(&c, path, &err), -1);
    assert_non_null(strstr(err.msg, "path too long once joined"));
    assert_int_equal(unlink(path), 0);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rmdir(dir), 0);
}

static void test_shipped_conf_is_defaults(void **state) {
    (void)state;
    const char *src = getenv("GENRED_SOURCE");
    if (!src || !*src) fail_msg("GENRED_SOURCE is not set (the source tree, for conf/genred.conf)");
    char path[4096];
    snprintf(path, sizeof path, "%s/conf/genred.conf", src);
    config c, d;
    config_defaults(&d);
    memset(&c, 0x5a, sizeof c); /* every key must be set by the file itself */
    gr_err err = {0};
    if (config_load_file(&c, path, &err) != 0) fail_msg("%s", err.msg);
    /* In the repository the file names the repository's model, beside its
     * folder; meson install rewrites that line to the default
     * (tests/test_install.py). */
    char model[4200];
    snprintf(model, sizeof model, "%s/conf/../models/gtzan-cnn.gmodel", src);
    assert_string_equal(c.model, model);
    assert_int_equal(access(c.model, R_OK), 0);
    memcpy(d.model, c.model, sizeof d.model);
    assert_config_equal(&c, &d);
}

static void test_workers(void **state) {
    (void)state;
    config c;
    config_defaults(&c);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int expect = online < 1 ? 1 : online > 256 ? 256 : (int)online;
    assert_int_equal(config_workers(&c), expect);
    assert_true(config_workers(&c) >= 1);
    set_ok(&c, "workers", "3");
    assert_int_equal(config_workers(&c), 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_set_every_key),
        cmocka_unit_test(test_bad_values_refused),
        cmocka_unit_test(test_error_messages),
        cmocka_unit_test(test_file_syntax),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_print_round_trip),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_paths_relative_to_the_file),
        cmocka_unit_test(test_origin_allowed),
        cmocka_unit_test(test_shipped_conf_is_defaults),
        cmocka_unit_test(test_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
