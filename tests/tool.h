/* tool.h - what the C tests that make their inputs at run time share:
 * running a command-line tool (the ffmpeg CLI) and removing their scratch
 * directory. Header-only, static inline: each test is its own executable.
 *
 * What it does not do: assert anything (the tests decide what a failure
 * means), or capture the tool's output. */
#ifndef GENRED_TESTS_TOOL_H
#define GENRED_TESTS_TOOL_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

extern char **environ;

/* Runs argv[0] from PATH with stdin from /dev/null; returns its exit code,
 * or -1 when it could not be started or did not exit normally. */
static inline int run_tool(char *const argv[]) {
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0) return -1;
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return -1;
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static inline int tool_remove_entry(const char *path, const struct stat *sb, int flag,
                                    struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Removes dir and everything below it (a test's mkdtemp'ed scratch
 * directory); what cannot be removed is left. */
static inline void remove_tree(const char *dir) {
    nftw(dir, tool_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
