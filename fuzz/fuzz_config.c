/* fuzz_config.c - libFuzzer harness: the conf-file parser on arbitrary bytes.
 *
 * The bytes become a conf file (a memfd, opened by path as the daemon opens
 * its file) and go through config_load_file() over the defaults. Besides not
 * crashing, the parser must keep its promise that a printed configuration
 * loads back to the same one: every file it accepts is printed
 * (config_print()), the print is loaded over fresh defaults and printed
 * again, and the two prints must be identical. A refused file must say why.
 *
 * What it does not do: environment variables or flags (the same config_set()
 * underneath; test_config.c covers their layering). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "genred/config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int conf_fd = -1;     /* memfd reused by every input */
static char conf_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    conf_fd = memfd_create("fuzz-config", 0);
    if (conf_fd < 0) {
        perror("fuzz_config: memfd_create");
        abort();
    }
    snprintf(conf_path, sizeof conf_path, "/proc/self/fd/%d", conf_fd);
    return 0;
}

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_config: %s\n%s\n", what, detail ? detail : "");
    abort();
}

static void put(const void *data, size_t size) {
    if (ftruncate(conf_fd, 0) != 0) fail("ftruncate", NULL);
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(conf_fd, (const char *)data + done, size - done, (off_t)done);
        if (n <= 0) fail("pwrite", NULL);
        done += (size_t)n;
    }
}

/* config_print() into a malloc'd string. */
static char *printed(const config *c) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) fail("open_memstream", NULL);
    config_print(c, f);
    if (fclose(f) != 0) fail("fclose", NULL);
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    put(data, size);
    config c;
    config_defaults(&c);
    gr_err err = {0};
    if (config_load_file(&c, conf_path, &err) != 0) {
        if (err.msg[0] == '\0') fail("refused without a message", NULL);
        return 0;
    }
    char *first = printed(&c);
    put(first, strlen(first));
    config again;
    config_defaults(&again);
    if (config_load_file(&again, conf_path, &err) != 0) fail("printed configuration refused", err.msg);
    char *second = printed(&again);
    if (strcmp(first, second) != 0) fail("printed configuration loads back differently", first);
    free(first);
    free(second);
    return 0;
}
