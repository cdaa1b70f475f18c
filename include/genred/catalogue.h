/* catalogue.h - classify a list of files, several songs at once, into JSON
 * lines: what `genred classify` runs, for one file or a library of them.
 *
 * Throughput. `jobs` threads each take the next file, read it and call
 * engine_classify(). The engine's decoding threads and inference workers
 * are shared by all of them, so while one song waits for the network the
 * next ones decode, and no core waits for one song's serial parts (reading
 * the file, indexing its packets, the answer). docs/performance.md measures
 * songs per second per core against one song at a time.
 *
 * Output. One line per file, in the list's order: the engine's answer plus
 * "file", or {"file", "error": {"code", "message"}} for a file that cannot
 * be classified. A line is written (one write(2), to the output file or
 * standard output) as soon as it and every line before it are done; a song
 * may run at most `jobs` x WINDOW_PER_JOB files ahead of the first one not
 * written, which bounds the lines held back. "file" is the name as listed;
 * bytes of a name that are not UTF-8 are written as U+FFFD.
 *
 * Resume. With an output file, what it holds is kept: every file that has a
 * line in it (an answer or an error) is skipped, and new lines are appended.
 * A last line cut short by an interruption (no newline) is removed first,
 * so its file is done again. Interrupt a run at any moment (a signal, a
 * crash, a reboot) and run the same command again to go on. A complete line
 * that is not one of genred's refuses the run, naming it, rather than guess.
 *
 * Shards. With shards > 1, only the files of shard `shard` are done: those
 * whose name's FNV-1a 64-bit hash modulo shards is `shard`. A file's shard
 * depends on its name alone, so N processes given the same list (in any
 * order) with shards 0..N-1 do every file exactly once, and a file keeps its
 * shard when the list grows, so a resumed shard skips what it did before
 * (deploy/k8s/catalogue/job.yaml runs one shard per pod of an indexed Job).
 *
 * Listed twice: a name is done once, at its first place in the list.
 *
 * What it does not do: find audio files in folders (scripts/classify-folder
 * does), classify (engine.h), or print anything but lines and, if asked, the
 * progress line. */
#ifndef GENRED_CATALOGUE_H
#define GENRED_CATALOGUE_H

#include <stddef.h>

#include "genred/engine.h"
#include "genred/err.h"

typedef struct catalogue_opts {
    classify_opts classify;    /* for every file */
    size_t max_upload_bytes;   /* a larger file gets an error line, as the
                                * daemon's 413 */
    int jobs;                  /* songs in flight; <= 0: catalogue_default_jobs() */
    const char *output;        /* NULL: standard output, nothing resumed; else
                                * the file appended to and resumed */
    unsigned shard, shards;    /* shards > 1: only shard `shard` (< shards) */
    int progress;              /* 1: a progress line on stderr (a terminal's) */
} catalogue_opts;

typedef struct catalogue_counts {
    size_t listed;       /* names in the list, each counted once */
    size_t other_shards; /* left to the other shards */
    size_t resumed;      /* with a line in the output already */
    size_t answered;     /* classified by this run */
    size_t failed;       /* given an error line by this run */
} catalogue_counts;

/* Songs in flight by default: one per core plus one, measured in
 * docs/performance.md ("Catalogues"). */
int catalogue_default_jobs(void);

/* Reads a list of file names from path ("-": standard input): separated by
 * NUL bytes if it holds any (find -print0), else one per line; empty names
 * are skipped. On success *files (n strings) is owned by the caller: free
 * with catalogue_list_free(). GR_EFILE when it cannot be read. */
int catalogue_read_list(const char *path, char ***files, size_t *n, gr_err *err);
void catalogue_list_free(char **files, size_t n);

/* 1 if name belongs to shard k of n (n >= 1, k < n). */
int catalogue_in_shard(const char *name, unsigned k, unsigned n);

/* Classifies files[0..n) (borrowed) as described above. Returns 0 when
 * every file to do has its line (counts say how many are error lines), or
 * -1 with err set when the run could not go on: the output cannot be read,
 * resumed or written (GR_EFILE), or memory ran out (GR_EINTERNAL). Lines
 * written before a failure stay. Call with no other classification running
 * on e from this thread. */
int catalogue_run(engine *e, char *const *files, size_t n, const catalogue_opts *o,
                  catalogue_counts *counts, gr_err *err);

#endif
