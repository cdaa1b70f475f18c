/* config.c - the daemon's settings: one table of keys, parsed strictly.
 *
 * Every key lives in keys[] with its kind and its allowed range; defaults,
 * the conf file, GENRED_* variables and command-line flags all end in
 * config_set(), so a value is validated the same way wherever it comes from.
 * config_print() writes the conf-file syntax config_load_file() reads, so a
 * printed configuration loads back to the same struct (from the working
 * directory: a relative path in a conf file names a file beside it, so one
 * printed into another folder names other files).
 *
 * What it does not do: decide precedence (main() calls the layers in order)
 * or parse argv (main() splits --key=value and hands the pair over). */
#include "genred/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "genred/fileio.h"

extern char **environ;

/* Longest conf-file line, newline excluded. The longest line config_print()
 * can write is a model path of 4095 characters that all need escaping. */
#define CONFIG_LINE_MAX 16384

typedef enum key_kind {
    KIND_ADDRESS,   /* char[]: literal IPv4 or IPv6 address */
    KIND_PATH,      /* char[]: non-empty, no control characters */
    KIND_OPT_PATH,  /* char[]: a KIND_PATH, or "" for none */
    KIND_ORIGINS,   /* char[]: web origins, comma or space separated; "*"; or "" */
    KIND_LOG_LEVEL, /* log_level: error | warn | info | debug */
    KIND_INT,       /* int */
    KIND_OPT_PORT,  /* int: a TCP port, or "off" (-1) */
    KIND_COUNT,     /* size_t, plain integer */
    KIND_BYTES,     /* size_t, integer with optional K/M/G suffix */
    KIND_SECONDS,   /* double, non-negative decimal */
} key_kind;

typedef struct key {
    const char *name;
    key_kind kind;
    size_t offset;
    size_t size;        /* of the field; bounds the strings */
    double min, max;    /* numeric kinds; exact for every bound used here */
} key;

#define FIELD(f) offsetof(config, f), sizeof(((config *)0)->f)

/* In struct order; config_print() and conf/genred.conf follow it. */
static const key keys[] = {
    {"listen", KIND_ADDRESS, FIELD(listen), 0, 0},
    {"port", KIND_INT, FIELD(port), 0, 65535},
    {"ops_port", KIND_OPT_PORT, FIELD(ops_port), 0, 65535},
    {"model", KIND_PATH, FIELD(model), 0, 0},
    {"workers", KIND_INT, FIELD(workers), 0, 256},
    {"max_batch", KIND_INT, FIELD(max_batch), 1, 1024},
    {"queue_capacity", KIND_COUNT, FIELD(queue_capacity), 0, 1000000},
    {"max_upload_bytes", KIND_BYTES, FIELD(max_upload_bytes), 1, 4294967296.0},
    {"max_upload_memory", KIND_BYTES, FIELD(max_upload_memory), 1, 1099511627776.0},
    {"max_duration_s", KIND_SECONDS, FIELD(max_duration_s), 1, 86400},
    {"trim_start_s", KIND_SECONDS, FIELD(trim_start_s), 0, 3600},
    {"trim_end_s", KIND_SECONDS, FIELD(trim_end_s), 0, 3600},
    {"trim_min_keep_s", KIND_SECONDS, FIELD(trim_min_keep_s), 0, 86400},
    {"max_chunks", KIND_INT, FIELD(max_chunks), 0, MAX_CHUNKS_LIMIT},
    {"max_connections", KIND_INT, FIELD(max_connections), 1, 65536},
    {"max_connections_per_client", KIND_INT, FIELD(max_connections_per_client), 0, 65536},
    {"max_active_requests", KIND_INT, FIELD(max_active_requests), 0, 65536},
    {"idle_timeout_s", KIND_INT, FIELD(idle_timeout_s), 1, 86400},
    {"header_timeout_s", KIND_SECONDS, FIELD(header_timeout_s), 0.5, 3600},
    {"min_upload_rate", KIND_BYTES, FIELD(min_upload_rate), 0, 1073741824.0},
    {"request_timeout_s", KIND_SECONDS, FIELD(request_timeout_s), 0, 86400},
    {"shutdown_timeout_s", KIND_SECONDS, FIELD(shutdown_timeout_s), 0, 3600},
    {"api_keys_file", KIND_OPT_PATH, FIELD(api_keys_file), 0, 0},
    {"cors_origins", KIND_ORIGINS, FIELD(cors_origins), 0, 0},
    {"tls_cert_file", KIND_OPT_PATH, FIELD(tls_cert_file), 0, 0},
    {"tls_key_file", KIND_OPT_PATH, FIELD(tls_key_file), 0, 0},
    {"log_level", KIND_LOG_LEVEL, FIELD(log_level), 0, 0},
    {"fftw_wisdom", KIND_OPT_PATH, FIELD(fftw_wisdom), 0, 0},
};
#define KEY_COUNT (sizeof keys / sizeof keys[0])

static const char *const log_levels[] = {
    [LOG_LEVEL_ERROR] = "error",
    [LOG_LEVEL_WARN] = "warn",
    [LOG_LEVEL_INFO] = "info",
    [LOG_LEVEL_DEBUG] = "debug",
};
#define LOG_LEVEL_COUNT (sizeof log_levels / sizeof log_levels[0])

const char *log_level_name(log_level level) {
    return (size_t)level < LOG_LEVEL_COUNT ? log_levels[level] : "info";
}

/* The installed model: meson passes <prefix>/<datadir>/genred/models/...,
 * so the default follows the install prefix. A build by other means gets the
 * repository's copy, relative to the working directory. */
#ifndef GENRED_DEFAULT_MODEL
#define GENRED_DEFAULT_MODEL "models/gtzan-cnn.gmodel"
#endif
_Static_assert(sizeof GENRED_DEFAULT_MODEL <= sizeof ((config *)0)->model,
               "GENRED_DEFAULT_MODEL is longer than config.model");

void config_defaults(config *c) {
    memset(c, 0, sizeof *c);
    memcpy(c->listen, "127.0.0.1", sizeof "127.0.0.1");
    c->port = 8080;
    c->ops_port = -1;
    memcpy(c->model, GENRED_DEFAULT_MODEL, sizeof GENRED_DEFAULT_MODEL);
    c->workers = 0;
    c->max_batch = 8;
    c->queue_capacity = 64;
    c->max_upload_bytes = (size_t)64 << 20;
    c->max_upload_memory = (size_t)256 << 20;
    c->max_duration_s = 1200;
    c->trim_start_s = 15;
    c->trim_end_s = 15;
    c->trim_min_keep_s = 30;
    c->max_connections = 256;
    c->idle_timeout_s = 30;
    c->header_timeout_s = 10;
    c->min_upload_rate = 1024;
    c->request_timeout_s = 60;
    c->shutdown_timeout_s = 30;
    c->log_level = LOG_LEVEL_INFO;
}

/* A bad value quoted back in an error message: at most 48 bytes, control
 * characters shown as '?', so a hostile value cannot forge log lines. */
static const char *shown(const char *value, char buf[64]) {
    size_t i = 0;
    for (; value[i] && i < 48; i++) {
        unsigned char ch = (unsigned char)value[i];
        buf[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    if (value[i]) {
        memcpy(buf + i, "...", 4);
    } else {
        buf[i] = '\0';
    }
    return buf;
}

static const key *find_key(const char *name) {
    char norm[32];
    size_t n = strlen(name);
    if (n == 0 || n >= sizeof norm) return NULL;
    for (size_t i = 0; i <= n; i++) norm[i] = name[i] == '-' ? '_' : name[i];
    for (size_t i = 0; i < KEY_COUNT; i++)
        if (strcmp(keys[i].name, norm) == 0) return &keys[i];
    return NULL;
}

static int all_digits(const char *s, size_t n) {
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

/* Plain decimal digits only: no sign, no spaces, no 0x, no trailing text. */
static int parse_uint(const char *s, size_t n, unsigned long long *out) {
    char buf[32];
    if (!all_digits(s, n) || n >= sizeof buf) return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    errno = 0;
    unsigned long long v = strtoull(buf, NULL, 10);
    if (errno == ERANGE) return -1;
    *out = v;
    return 0;
}

/* digits[.digits][e[+-]digits] or .digits[...]: what strtod would take
 * minus the forms a typo produces (signs, spaces, hex, inf, nan). */
static int parse_seconds(const char *s, double *out) {
    const char *p = s;
    size_t int_digits = 0, frac_digits = 0;
    while (*p >= '0' && *p <= '9') p++, int_digits++;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') p++, frac_digits++;
    }
    if (int_digits + frac_digits == 0) return -1;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (*p < '0' || *p > '9') return -1;
        while (*p >= '0' && *p <= '9') p++;
    }
    if (*p != '\0') return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end != p || errno == ERANGE || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

static int parse_bytes(const char *s, unsigned long long *out) {
    size_t n = strlen(s);
    unsigned shift = 0;
    if (n > 0) {
        switch (s[n - 1]) {
        case 'K': case 'k': shift = 10; break;
        case 'M': case 'm': shift = 20; break;
        case 'G': case 'g': shift = 30; break;
        default: break;
        }
    }
    if (shift) n--;
    unsigned long long v;
    if (parse_uint(s, n, &v) < 0) return -1;
    if (v > (ULLONG_MAX >> shift)) return -1;
    *out = v << shift;
    return 0;
}

/* A byte count with the largest suffix that divides it exactly. */
static void format_bytes(unsigned long long v, char buf[32]) {
    static const char suffix[] = "GMK";
    for (int i = 0; i < 3; i++) {
        unsigned shift = (unsigned)(30 - 10 * i);
        if (v != 0 && v % (1ULL << shift) == 0) {
            snprintf(buf, 32, "%llu%c", v >> shift, suffix[i]);
            return;
        }
    }
    snprintf(buf, 32, "%llu", v);
}

/* The shortest %g form that strtod reads back as the same double. */
static void format_seconds(double v, char buf[40]) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, 40, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* Separators of a cors_origins list. */
static int is_origin_separator(char ch) { return ch == ',' || ch == ' ' || ch == '\t'; }

/* An origin exactly as a browser sends it in Origin (RFC 6454's
 * serialisation): http or https, a lower-case host name or a bracketed
 * IPv6 address, a port only when it is not the scheme's default, nothing
 * after. Anything else would never match, so it is refused. */
static int origin_valid(const char *s, size_t n) {
    size_t at;
    unsigned default_port;
    if (n > 7 && memcmp(s, "http://", 7) == 0) at = 7, default_port = 80;
    else if (n > 8 && memcmp(s, "https://", 8) == 0) at = 8, default_port = 443;
    else return 0;
    size_t host = at;
    if (s[at] == '[') {
        while (++at < n && s[at] != ']')
            if (!strchr("0123456789abcdef:.", s[at])) return 0;
        if (at == n || at == host + 1) return 0;
        at++;
    } else {
        while (at < n && (islower((unsigned char)s[at]) || isdigit((unsigned char)s[at]) ||
                          s[at] == '-' || s[at] == '.'))
            at++;
        if (at == host) return 0;
    }
    if (at == n) return 1;
    if (s[at] != ':' || n - at < 2 || n - at > 6 || s[at + 1] == '0') return 0;
    unsigned long port = 0;
    for (size_t i = at + 1; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) return 0;
        port = port * 10 + (unsigned long)(s[i] - '0');
    }
    return port >= 1 && port <= 65535 && port != default_port;
}

/* cors_origins: "", "*", or origins separated by commas and blanks. */
static int origins_valid(const char *value, char show[64], const char **why) {
    if (strcmp(value, "*") == 0) return 1;
    for (const char *p = value; *p;) {
        while (is_origin_separator(*p)) p++;
        size_t n = 0;
        while (p[n] && !is_origin_separator(p[n])) n++;
        if (n == 0) break;
        if (!origin_valid(p, n)) {
            snprintf(show, 64, "%.*s%s", n > 48 ? 48 : (int)n, p, n > 48 ? "..." : "");
            for (char *q = show; *q; q++)
                if ((unsigned char)*q < 0x20 || *q == 0x7f) *q = '?';
            *why = strcmp(show, "*") == 0 ? "'*' stands alone, for any origin" : NULL;
            return 0;
        }
        p += n;
    }
    return 1;
}

int config_origin_allowed(const config *c, const char *origin) {
    if (!origin || !origin[0] || !c->cors_origins[0]) return 0;
    if (strcmp(c->cors_origins, "*") == 0) return 1;
    size_t want = strlen(origin);
    for (const char *p = c->cors_origins; *p;) {
        while (is_origin_separator(*p)) p++;
        size_t n = 0;
        while (p[n] && !is_origin_separator(p[n])) n++;
        if (n == want && memcmp(p, origin, n) == 0) return 1;
        p += n;
    }
    return 0;
}

static int set_string(const key *k, char *field, const char *value,
                      gr_err *err) {
    char show[64];
    size_t n = strlen(value);
    if (n >= k->size)
        return gr_fail(err, GR_ECONFIG, "%s: value too long (%zu bytes, at most %zu), got '%s'",
                       k->name, n, k->size - 1, shown(value, show));
    switch (k->kind) {
    case KIND_ADDRESS: {
        unsigned char addr[16];
        if (inet_pton(AF_INET, value, addr) != 1 &&
            inet_pton(AF_INET6, value, addr) != 1)
            return gr_fail(err, GR_ECONFIG,
                           "%s: expected a literal IPv4 or IPv6 address, got '%s'",
                           k->name, shown(value, show));
        break;
    }
    case KIND_ORIGINS: {
        char bad[64];
        const char *why = NULL;
        if (!origins_valid(value, bad, &why))
            return gr_fail(err, GR_ECONFIG,
                           "%s: '%s' is not an origin as browsers send it: %s", k->name, bad,
                           why ? why
                               : "scheme://host[:port], http or https, lower case, no path, "
                                 "no default port (e.g. https://app.example.com)");
        break;
    }
    case KIND_PATH:
    case KIND_OPT_PATH:
        if (n == 0 && k->kind == KIND_PATH)
            return gr_fail(err, GR_ECONFIG, "%s: expected a path, got ''", k->name);
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)value[i];
            if (ch < 0x20 || ch == 0x7f)
                return gr_fail(err, GR_ECONFIG,
                               "%s: control character in path '%s'", k->name,
                               shown(value, show));
        }
        break;
    default:
        return gr_fail(err, GR_EINTERNAL, "%s: not a string key", k->name);
    }
    memset(field, 0, k->size);
    memcpy(field, value, n);
    return 0;
}

int config_set(config *c, const char *key_name, const char *value, gr_err *err) {
    char show[64];
    if (!key_name || !value)
        return gr_fail(err, GR_ECONFIG, "config: missing key or value");
    const key *k = find_key(key_name);
    if (!k) return gr_fail(err, GR_ECONFIG, "unknown key '%s'", shown(key_name, show));
    char *field = (char *)c + k->offset;

    switch (k->kind) {
    case KIND_ADDRESS:
    case KIND_PATH:
    case KIND_OPT_PATH:
    case KIND_ORIGINS:
        return set_string(k, field, value, err);
    case KIND_LOG_LEVEL:
        for (size_t i = 0; i < LOG_LEVEL_COUNT; i++) {
            if (strcmp(value, log_levels[i]) != 0) continue;
            log_level level = (log_level)i;
            memcpy(field, &level, sizeof level);
            return 0;
        }
        return gr_fail(err, GR_ECONFIG, "%s: expected one of error, warn, info, debug, got '%s'",
                       k->name, shown(value, show));
    case KIND_INT:
    case KIND_OPT_PORT:
    case KIND_COUNT: {
        if (k->kind == KIND_OPT_PORT && strcmp(value, "off") == 0) {
            int off = -1;
            memcpy(field, &off, sizeof off);
            return 0;
        }
        unsigned long long v;
        if (parse_uint(value, strlen(value), &v) < 0 || (double)v < k->min ||
            (double)v > k->max)
            return gr_fail(err, GR_ECONFIG, "%s: expected %san integer in %.0f..%.0f, got '%s'",
                           k->name, k->kind == KIND_OPT_PORT ? "off or " : "", k->min, k->max,
                           shown(value, show));
        if (k->kind != KIND_COUNT) {
            int iv = (int)v;
            memcpy(field, &iv, sizeof iv);
        } else {
            size_t sv = (size_t)v;
            memcpy(field, &sv, sizeof sv);
        }
        return 0;
    }
    case KIND_BYTES: {
        unsigned long long v;
        char max[32];
        format_bytes((unsigned long long)k->max, max);
        if (parse_bytes(value, &v) < 0 || (double)v < k->min ||
            (double)v > k->max || v > SIZE_MAX)
            return gr_fail(err, GR_ECONFIG,
                           "%s: expected a byte count in %.0f..%s (suffix K, M or G allowed), got '%s'",
                           k->name, k->min, max, shown(value, show));
        size_t sv = (size_t)v;
        memcpy(field, &sv, sizeof sv);
        return 0;
    }
    case KIND_SECONDS: {
        double v;
        if (parse_seconds(value, &v) < 0 || v < k->min || v > k->max)
            return gr_fail(err, GR_ECONFIG, "%s: expected seconds in %g..%g, got '%s'",
                           k->name, k->min, k->max, shown(value, show));
        memcpy(field, &v, sizeof v);
        return 0;
    }
    }
    return gr_fail(err, GR_EINTERNAL, "%s: unhandled key kind", k->name);
}

static int is_blank(char ch) { return ch == ' ' || ch == '\t'; }

/* What a conf-file line holds. */
typedef enum conf_line {
    CONF_MALFORMED = -1,    /* *why says what is wrong */
    CONF_NOTHING = 0,       /* blank, or a comment */
    CONF_SETTING = 1,       /* a key and its value */
} conf_line;

/* Splits a line into key and value in place. Values may be unquoted (a '#'
 * after whitespace starts a comment), in '...' (literal) or in "..." (with
 * \" and \\ as the only escapes). */
static conf_line split_line(char *s, char **key_out, char **value_out, const char **why) {
    while (is_blank(*s)) s++;
    if (*s == '\0' || *s == '#') return CONF_NOTHING;
    char *eq = strchr(s, '=');
    if (!eq) return *why = "expected 'key = value'", CONF_MALFORMED;
    char *kend = eq;
    while (kend > s && is_blank(kend[-1])) kend--;
    if (kend == s) return *why = "missing key before '='", CONF_MALFORMED;
    *kend = '\0';
    *key_out = s;

    char *v = eq + 1;
    while (is_blank(*v)) v++;
    char *rest;
    if (*v == '"' || *v == '\'') {
        char quote = *v;
        char *in = v + 1, *out = v;
        for (;;) {
            if (*in == '\0') return *why = "unterminated quoted value", CONF_MALFORMED;
            if (*in == quote) break;
            if (quote == '"' && *in == '\\') {
                in++;
                if (*in != '"' && *in != '\\')
                    return *why = "unknown escape in quoted value (only \\\" and \\\\)",
                           CONF_MALFORMED;
            }
            *out++ = *in++;
        }
        *out = '\0';
        rest = in + 1;
        while (is_blank(*rest)) rest++;
        if (*rest != '\0' && *rest != '#')
            return *why = "text after the closing quote", CONF_MALFORMED;
    } else {
        char *end = v;
        while (*end && !(*end == '#' && (end == v || is_blank(end[-1])))) end++;
        while (end > v && is_blank(end[-1])) end--;
        *end = '\0';
    }
    *value_out = v;
    return CONF_SETTING;
}

/* A path in a conf file names a file beside it when it is relative: it is
 * joined to the folder of the conf file (as the conf file was named), so
 * the file reads the same from any working directory. */
static int set_from_file(config *c, const char *conf, const char *key_name, const char *value,
                         gr_err *err) {
    const key *k = find_key(key_name);
    const char *slash = strrchr(conf, '/');
    if (!k || (k->kind != KIND_PATH && k->kind != KIND_OPT_PATH) || value[0] == '\0' ||
        value[0] == '/' || !slash)
        return config_set(c, key_name, value, err);
    char joined[sizeof c->model];
    size_t dir = (size_t)(slash - conf) + 1, n = strlen(value);
    if (dir + n >= sizeof joined || dir + n >= k->size)
        return gr_fail(err, GR_ECONFIG, "%s: path too long once joined to the conf file's folder",
                       k->name);
    memcpy(joined, conf, dir);
    memcpy(joined + dir, value, n + 1);
    return config_set(c, key_name, joined, err);
}

int config_load_file(config *c, const char *path, gr_err *err) {
    FILE *f = fopen(path, "r");
    if (!f) return gr_fail(err, GR_EFILE, "%s: cannot open: %s", path, strerror(errno));
    char *line = malloc(CONFIG_LINE_MAX + 1);
    if (!line) {
        fclose(f);
        return gr_fail(err, GR_EINTERNAL, "%s: out of memory", path);
    }
    line_reader lines = {.f = f, .path = path, .buf = line, .cap = CONFIG_LINE_MAX + 1};
    size_t n;
    line_result got = LINE_END;
    int rc = 0;
    while (rc == 0 && (got = line_next(&lines, &n, err)) == LINE_READ) {
        char *s = line;
        /* A UTF-8 byte order mark, as some editors write one. */
        if (lines.lineno == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3;
        char *k, *v;
        const char *why = NULL;
        conf_line kind = split_line(s, &k, &v, &why);
        gr_err e;
        if (kind == CONF_MALFORMED)
            rc = gr_fail(err, GR_ECONFIG, "%s:%u: %s", path, lines.lineno, why);
        else if (kind == CONF_SETTING && set_from_file(c, path, k, v, &e) < 0)
            rc = gr_fail(err, e.status, "%s:%u: %s", path, lines.lineno, e.msg);
    }
    if (rc == 0 && got == LINE_FAILED) rc = -1;
    free(line);
    fclose(f);
    return rc;
}

int config_load_env(config *c, gr_err *err) {
    static const char prefix[] = "GENRED_";
    const size_t plen = sizeof prefix - 1;
    for (char **e = environ; e && *e; e++) {
        const char *var = *e;
        if (strncmp(var, prefix, plen) != 0) continue;
        const char *name = var + plen;
        const char *eq = strchr(name, '=');
        if (!eq) continue;
        size_t n = (size_t)(eq - name);
        /* GENRED_CONFIG names the conf file (main.c); every other GENRED_
         * variable must be a setting, so a typo is refused, not ignored. */
        if (n == 6 && memcmp(name, "CONFIG", 6) == 0) continue;

        char key_name[32], full[64], show[64];
        size_t fn = (size_t)(eq - var) < sizeof full - 1 ? (size_t)(eq - var) : sizeof full - 1;
        memcpy(full, var, fn);
        full[fn] = '\0';
        int known = n > 0 && n < sizeof key_name;
        for (size_t i = 0; known && i < n; i++) {
            char ch = name[i];
            key_name[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
        }
        if (known) {
            key_name[n] = '\0';
            known = find_key(key_name) != NULL;
        }
        if (!known)
            return gr_fail(err, GR_ECONFIG, "environment: unknown setting %s",
                           shown(full, show));
        gr_err ve;
        if (config_set(c, key_name, eq + 1, &ve) < 0)
            return gr_fail(err, ve.status, "environment %s: %s", full, ve.msg);
    }
    return 0;
}

/* Quotes only when the bare form would read back differently. */
static void print_string(FILE *f, const char *s) {
    size_t n = strlen(s);
    int quote = n == 0 || is_blank(s[0]) || is_blank(s[n - 1]) || s[0] == '"' ||
                s[0] == '\'' || strchr(s, '#') != NULL;
    if (!quote) {
        fputs(s, f);
        return;
    }
    putc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putc('\\', f);
        putc(*s, f);
    }
    putc('"', f);
}

void config_print(const config *c, FILE *f) {
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const key *k = &keys[i];
        const char *field = (const char *)c + k->offset;
        fprintf(f, "%s = ", k->name);
        switch (k->kind) {
        case KIND_LOG_LEVEL: {
            log_level level;
            memcpy(&level, field, sizeof level);
            fputs(log_level_name(level), f);
            break;
        }
        case KIND_ADDRESS:
        case KIND_PATH:
        case KIND_OPT_PATH:
        case KIND_ORIGINS: {
            /* Bounded even if the struct was filled without config_set(). */
            char s[sizeof c->model];
            size_t n = strnlen(field, k->size - 1);
            memcpy(s, field, n);
            s[n] = '\0';
            print_string(f, s);
            break;
        }
        case KIND_INT:
        case KIND_OPT_PORT: {
            int v;
            memcpy(&v, field, sizeof v);
            if (v < 0) fputs("off", f);
            else fprintf(f, "%d", v);
            break;
        }
        case KIND_COUNT: {
            size_t v;
            memcpy(&v, field, sizeof v);
            fprintf(f, "%zu", v);
            break;
        }
        case KIND_BYTES: {
            size_t v;
            char buf[32];
            memcpy(&v, field, sizeof v);
            format_bytes(v, buf);
            fputs(buf, f);
            break;
        }
        case KIND_SECONDS: {
            double v;
            char buf[40];
            memcpy(&v, field, sizeof v);
            format_seconds(v, buf);
            fputs(buf, f);
            break;
        }
        }
        putc('\n', f);
    }
}

int config_validate(const config *c, gr_err *err) {
    if ((c->tls_cert_file[0] == '\0') != (c->tls_key_file[0] == '\0'))
        return gr_fail(err, GR_ECONFIG, "tls_cert_file and tls_key_file must be set "
                       "together (both for HTTPS, neither for HTTP)");
    return 0;
}

int config_max_active_requests(const config *c) {
    if (c->max_active_requests > 0) return c->max_active_requests;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) return 2;
    return 2 * (n > 4096 ? 4096 : (int)n);
}

int config_workers(const config *c) {
    if (c->workers > 0) return c->workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) return 1;
    return n > 256 ? 256 : (int)n;
}
