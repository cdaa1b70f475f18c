/* test_routes.c - the route table (routes.h) is sound, and openapi.yaml
 * documents exactly its routes: the same paths, the same methods, and no
 * key asked where the table asks none (`security: []`) and one everywhere
 * else. /metrics counts under exactly the table's labels plus "other".
 *
 * The daemon's behaviour on each route is test_api.py's, test_lifecycle.py's
 * and test_contract.py's, which take the routes from openapi.yaml: this test
 * is what ties that document to the table http.c serves from. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "genred/fileio.h"
#include "genred/metrics.h"
#include "genred/routes.h"

#define MAX_OPS 64

/* One operation of openapi.yaml's paths section. */
typedef struct operation {
    char path[128];
    char method[16];
    int public;         /* `security: []`: no key */
} operation;

/* Reads the operations from openapi.yaml's top-level `paths:` mapping, as
 * the document writes it: paths at two spaces, methods at four, an
 * operation's fields at six. */
static size_t read_operations(operation *ops) {
    const char *src = getenv("GENRED_SOURCE");
    if (!src || !*src) fail_msg("GENRED_SOURCE is not set (the source tree, for openapi.yaml)");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/openapi.yaml", src);
    size_t len;
    gr_err err = {GR_OK, ""};
    char *text = (char *)file_read(path, 1 << 20, GR_EFILE, &len, &err);
    if (!text) fail_msg("%s", err.msg);

    static const char *const methods[] = {"get", "put", "post", "delete", "options",
                                          "head", "patch", "trace"};
    size_t n = 0;
    int in_paths = 0;
    char current[128] = "";
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] != ' ' && line[0] != '#') in_paths = strcmp(line, "paths:") == 0;
        if (!in_paths) continue;
        size_t k = strlen(line);
        while (k > 0 && line[k - 1] == ' ') line[--k] = '\0';
        if (strncmp(line, "  /", 3) == 0 && line[k - 1] == ':') {
            snprintf(current, sizeof current, "%.*s", (int)(k - 3), line + 2);
        } else if (strncmp(line, "    ", 4) == 0 && line[4] != ' ' && line[k - 1] == ':') {
            for (size_t m = 0; m < sizeof methods / sizeof *methods; m++) {
                if (strlen(methods[m]) != k - 5 || strncmp(line + 4, methods[m], k - 5) != 0)
                    continue;
                assert_true(current[0] && n < MAX_OPS);
                snprintf(ops[n].path, sizeof ops[n].path, "%s", current);
                snprintf(ops[n].method, sizeof ops[n].method, "%s", methods[m]);
                ops[n++].public = 0;
            }
        } else if (strcmp(line, "      security: []") == 0) {
            assert_true(n > 0);
            ops[n - 1].public = 1;
        }
    }
    free(text);
    return n;
}

static void test_table_is_sound(void **state) {
    (void)state;
    assert_true(route_count > 0);
    for (size_t i = 0; i < route_count; i++) {
        const route *r = &routes[i];
        assert_non_null(r->path);
        assert_int_equal(r->path[0], '/');
        assert_true(r->methods != 0 && (r->methods & ~(unsigned)(ROUTE_GET | ROUTE_POST)) == 0);
        assert_true(r->label && r->label[0]);
        assert_string_not_equal(r->label, ROUTE_LABEL_OTHER);
        assert_ptr_equal(route_find(r->path), r); /* paths are unique */
    }
    static const char *const strangers[] = {"", "/nope", "/healthz/", "/HEALTHZ",
                                            "/v1/classify/x", "//healthz", "/v1"};
    for (size_t i = 0; i < sizeof strangers / sizeof *strangers; i++)
        assert_null(route_find(strangers[i]));
    assert_null(route_find(NULL));
}

static void test_methods_and_allow(void **state) {
    (void)state;
    for (size_t i = 0; i < route_count; i++) {
        const route *r = &routes[i];
        int get = (r->methods & ROUTE_GET) != 0, post = (r->methods & ROUTE_POST) != 0;
        assert_int_equal(route_allows(r, "GET"), get);
        assert_int_equal(route_allows(r, "HEAD"), get);
        assert_int_equal(route_allows(r, "POST"), post);
        assert_true(route_allows(r, "OPTIONS"));
        assert_false(route_allows(r, "DELETE"));
        assert_false(route_allows(r, "get"));
        assert_false(route_allows(r, "options"));
        const char *allow = route_allow_header(r);
        assert_int_equal(strstr(allow, "GET, HEAD") != NULL, get);
        assert_int_equal(strstr(allow, "POST") != NULL, post);
        assert_non_null(strstr(allow, "OPTIONS"));
    }
    const route *classify = route_find("/v1/classify");
    assert_non_null(classify);
    assert_string_equal(route_allow_header(classify), "POST, OPTIONS");
    assert_int_equal(classify->handler, HANDLE_CLASSIFY);
}

/* openapi.yaml and the table: the same routes, methods and access. */
static void test_openapi_documents_the_table(void **state) {
    (void)state;
    operation ops[MAX_OPS];
    size_t n = read_operations(ops);
    assert_true(n > 0);
    for (size_t i = 0; i < n; i++) {
        const route *r = route_find(ops[i].path);
        if (!r) fail_msg("openapi.yaml documents %s, which routes.h does not serve", ops[i].path);
        unsigned bit = strcmp(ops[i].method, "get") == 0    ? ROUTE_GET
                       : strcmp(ops[i].method, "post") == 0 ? ROUTE_POST
                                                            : 0;
        if (!(r->methods & bit))
            fail_msg("openapi.yaml documents %s %s, which routes.h does not allow",
                     ops[i].method, ops[i].path);
        if (ops[i].public != (r->access != ROUTE_KEYED))
            fail_msg("%s %s: openapi.yaml says %s, routes.h says %s", ops[i].method,
                     ops[i].path, ops[i].public ? "no key" : "a key",
                     r->access != ROUTE_KEYED ? "no key" : "a key");
    }
    for (size_t i = 0; i < route_count; i++) {
        const route *r = &routes[i];
        for (unsigned bit = ROUTE_GET; bit <= ROUTE_POST; bit <<= 1) {
            if (!(r->methods & bit)) continue;
            const char *want = bit == ROUTE_GET ? "get" : "post";
            size_t found = 0;
            for (size_t k = 0; k < n; k++)
                found += strcmp(ops[k].path, r->path) == 0 && strcmp(ops[k].method, want) == 0;
            if (found != 1)
                fail_msg("routes.h serves %s %s; openapi.yaml documents it %zu times", want,
                         r->path, found);
        }
    }
}

/* Every label of the table, and "other", has its duration histogram from
 * the start, each once; nothing else does. */
static void test_metrics_count_the_table_labels(void **state) {
    (void)state;
    metrics *m = metrics_create(NULL);
    assert_non_null(m);
    metrics_observe_request(m, "/no/such/route", 404, 0.001, 0);
    char *text = metrics_render(m, NULL, NULL, NULL);
    assert_non_null(text);
    size_t labels = 0;
    for (const char *p = text; (p = strstr(p, "genred_request_duration_seconds_count{")); p++)
        labels++;
    size_t distinct = 1; /* "other" */
    for (size_t i = 0; i < route_count; i++) {
        size_t first = 0;
        while (strcmp(routes[first].label, routes[i].label) != 0) first++;
        distinct += first == i;
        char want[160];
        snprintf(want, sizeof want, "genred_request_duration_seconds_count{route=\"%s\"} ",
                 routes[i].label);
        const char *at = strstr(text, want);
        if (!at) fail_msg("no histogram for %s", routes[i].label);
        assert_null(strstr(at + 1, want));
    }
    assert_int_equal(labels, distinct);
    assert_non_null(strstr(text, "genred_requests_total{route=\"other\",status=\"404\"} 1\n"));
    free(text);
    metrics_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_is_sound),
        cmocka_unit_test(test_methods_and_allow),
        cmocka_unit_test(test_openapi_documents_the_table),
        cmocka_unit_test(test_metrics_count_the_table_labels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
