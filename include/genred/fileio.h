/* fileio.h - reading the files genred is told to read: whole, or by line.
 *
 * file_read() takes a whole file (a model, a TLS certificate or key, an
 * audio file for `genred classify`) into one buffer, bounded by the
 * caller's limit. It reads with read(2), so no stdio buffer keeps a copy,
 * into one allocation of the file's size when that is known; should the
 * buffer have to grow (a pipe), the old copy is wiped before it is freed.
 * So key material read with it lies in exactly one place, which the caller
 * wipes (explicit_bzero) when done.
 *
 * line_next() reads text files of settings or keys (the conf file, the API
 * key file) one line at a time into the caller's fixed buffer: a line that
 * does not fit, or holds a NUL byte (which would silently cut it), is an
 * error naming path:line, never a line cut short.
 *
 * What it does not do: parse what it reads, or write files. */
#ifndef GENRED_FILEIO_H
#define GENRED_FILEIO_H

#include <stddef.h>
#include <stdio.h>

#include "genred/err.h"

/* Reads the file at path. Returns a buffer of *len bytes followed by a NUL
 * (so text can be used as a string), which the caller frees; or NULL with
 * err set: GR_EFILE when it cannot be opened or read, `too_big` when it
 * holds more than max bytes (found after reading at most max + 1), and
 * GR_EINTERNAL when out of memory. Thread-safe. */
unsigned char *file_read(const char *path, size_t max, gr_status too_big, size_t *len,
                         gr_err *err);

/* A text file read line by line. Fill in f, path and the buffer; lineno
 * counts the lines read so far. */
typedef struct line_reader {
    FILE *f;            /* borrowed, open for reading */
    const char *path;   /* borrowed, for messages */
    char *buf;          /* borrowed, cap bytes: receives each line */
    size_t cap;         /* > 1; lines of up to cap - 1 bytes fit */
    unsigned lineno;
} line_reader;

typedef enum line_result {
    LINE_FAILED = -1,   /* err says why (GR_EFILE, naming path:line) */
    LINE_END = 0,       /* no more lines */
    LINE_READ = 1,      /* r->buf holds the next line */
} line_result;

/* Reads the next line into r->buf, NUL-terminated, without its newline (and
 * a '\r' before it), its length in *len. A last line without a newline
 * counts; an empty file has no lines. */
line_result line_next(line_reader *r, size_t *len, gr_err *err);

#endif
