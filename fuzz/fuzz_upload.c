/* fuzz_upload.c - libFuzzer harness: the whole HTTP request path.
 *
 * Uploads are parsed by libmicrohttpd (request line, headers, chunked
 * encoding, and multipart through its post processor, which only works on a
 * live connection), then routed and sunk by src/http.c and classified by the
 * engine. Instead of faking a connection, the harness starts the real server
 * in this process on 127.0.0.1 with an ephemeral port, with the real model,
 * and sends each fuzz input as the raw bytes of one TCP connection: whatever
 * requests they hold (several, when they are pipelined) go through exactly
 * the code the daemon runs. Slow for a fuzzer (a connection and a thread per
 * input) but real.
 *
 * Per input: connect, send everything while reading (the server may answer
 * and stop reading early), half-close, read until the server closes. Bugs:
 *   - a crash, leak or UB anywhere on the path (the sanitizers);
 *   - any answer with status 500: input must never be blamed on the server;
 *   - no end of the connection within HANG_S: a request that hangs.
 *
 * The model is models/gtzan-cnn.gmodel of the source tree (compiled in), or
 * $GENRED_FUZZ_MODEL. Limits are small so valid audio costs little: 1 MiB
 * uploads, 60 s of audio, one worker; one origin may call it from a browser
 * (cors_origins), so CORS headers and preflights are on the path too.
 *
 * What it does not do: TLS, API keys, signals (the daemon's own tests). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libavutil/log.h>

#include "genred/audio.h"
#include "genred/config.h"
#include "genred/engine.h"
#include "genred/http.h"
#include "genred/metrics.h"

#ifndef GENRED_FUZZ_MODEL_DEFAULT
#define GENRED_FUZZ_MODEL_DEFAULT "models/gtzan-cnn.gmodel"
#endif

#define HANG_S 30
/* Bytes of the answers kept for the status check; a connection's answers
 * are small (errors, a classify answer, /v1/model), and a status line cut
 * off past this point is still found by the streaming scan below. */
#define SCAN_TAIL 16

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The one server of the process: made once, never stopped (libFuzzer exits
 * the process). */
static struct {
    metrics *met;
    engine *engine;
    server *server;
    int port;
} fx;
static int verbose; /* $GENRED_FUZZ_VERBOSE: print each input's statuses */

static void die(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_upload: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    signal(SIGPIPE, SIG_IGN);
    verbose = getenv("GENRED_FUZZ_VERBOSE") != NULL;
    av_log_set_level(AV_LOG_QUIET);
    audio_limit_libav();
    config cfg;
    config_defaults(&cfg);
    gr_err err = {0};
    const char *model = getenv("GENRED_FUZZ_MODEL");
    if (config_set(&cfg, "model", model ? model : GENRED_FUZZ_MODEL_DEFAULT, &err) != 0 ||
        config_set(&cfg, "listen", "127.0.0.1", &err) != 0 ||
        config_set(&cfg, "port", "0", &err) != 0 ||
        config_set(&cfg, "workers", "1", &err) != 0 ||
        config_set(&cfg, "max_batch", "4", &err) != 0 ||
        config_set(&cfg, "max_upload_bytes", "1M", &err) != 0 ||
        config_set(&cfg, "max_duration_s", "60", &err) != 0 ||
        config_set(&cfg, "idle_timeout_s", "5", &err) != 0 ||
        config_set(&cfg, "cors_origins", "http://127.0.0.1:3000", &err) != 0 ||
        config_set(&cfg, "log_level", "error", &err) != 0)
        die("config", err.msg);
    if (!(fx.met = metrics_create(&err))) die("metrics_create", err.msg);
    if (!(fx.engine = engine_create(&cfg, fx.met, &err))) die("engine_create", err.msg);
    if (!(fx.server = server_start(&cfg, fx.engine, fx.met, &err))) die("server_start", err.msg);
    fx.port = server_port(fx.server);
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Finds status lines in the answer stream as it arrives, across reads:
 * "HTTP/1.x NNN" where a response can begin. Bodies are JSON, YAML, HTML,
 * CSS, JS and metrics text that never hold "HTTP/1.", so a match is a
 * status line. */
typedef struct scanner {
    char tail[SCAN_TAIL + 65536];
    size_t n;
    char statuses[64]; /* "200 415 ...", for GENRED_FUZZ_VERBOSE */
    size_t st_len;
} scanner;

static void scan(scanner *s, const char *buf, size_t len) {
    memcpy(s->tail + s->n, buf, len);
    size_t total = s->n + len;
    size_t i = 0;
    for (; i + 12 <= total; i++) {
        const char *p = s->tail + i;
        if (memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ') continue;
        if (s->st_len + 4 < sizeof s->statuses) {
            memcpy(s->statuses + s->st_len, p + 9, 3);
            s->statuses[s->st_len + 3] = ' ';
            s->st_len += 4;
            s->statuses[s->st_len] = '\0';
        }
        if (p[9] == '5' && p[10] == '0' && p[11] == '0') die("an answer with status 500", NULL);
    }
    /* Keep the last bytes that could start a status line. */
    size_t keep = total < SCAN_TAIL ? total : SCAN_TAIL;
    if (i < total - keep) i = total - keep;
    memmove(s->tail, s->tail + i, total - i);
    s->n = total - i;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect", strerror(errno));

    static scanner s;
    s.n = 0;
    s.st_len = 0;
    s.statuses[0] = '\0';
    size_t sent = 0;
    int writing = 1;
    if (size == 0) {
        shutdown(fd, SHUT_WR);
        writing = 0;
    }
    double deadline = now_s() + HANG_S;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN | (writing ? POLLOUT : 0)};
        int left_ms = (int)((deadline - now_s()) * 1000);
        if (left_ms <= 0) die("the server neither answered nor closed the connection", NULL);
        int r = poll(&p, 1, left_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("poll", strerror(errno));
        if (r == 0) continue;
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            char buf[65536];
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n > 0) {
                scan(&s, buf, (size_t)n);
                continue;
            }
            if (n == 0 || errno == ECONNRESET || errno == EPIPE) break;
            if (errno != EINTR && errno != EAGAIN) die("recv", strerror(errno));
        }
        if (writing && (p.revents & POLLOUT)) {
            ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) sent += (size_t)n;
            else if (errno == EPIPE || errno == ECONNRESET) writing = 0; /* answered early */
            else if (errno != EAGAIN && errno != EINTR) die("send", strerror(errno));
            if (writing && sent == size) {
                shutdown(fd, SHUT_WR);
                writing = 0;
            }
        }
    }
    close(fd);
    if (verbose) fprintf(stderr, "fuzz_upload: %zu bytes -> %s\n", size, s.statuses);
    return 0;
}
