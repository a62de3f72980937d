/* progress.h: the progress report of a long import (progress.c). On a
 * terminal a one-line bar redrawn in place; otherwise (a log, a CI job) a
 * plain line every few seconds, so a multi-GB import is not silent. */
#ifndef ENGRAM_CTL_PROGRESS_H
#define ENGRAM_CTL_PROGRESS_H

#include <stdint.h>

typedef struct progress {
    const char *what;            /* "import TABLE" */
    uint64_t total_rows;
    uint32_t row_bytes;
    uint64_t t0_ns, last_ns;
    int tty;                     /* stderr is a terminal */
    int drawn;                   /* a bar is on the current line */
} progress;

/* Seconds between plain lines when stderr is not a terminal (default 10;
 * 0: none). Set once from --progress-every before an import. */
void progress_set_every(uint32_t seconds);

void progress_start(progress *p, const char *what, uint64_t total_rows, uint32_t row_bytes);
/* Reports rows_done when the time for a redraw or a line has come. */
void progress_update(progress *p, uint64_t rows_done);
/* Draws the final bar and ends its line (a terminal); no-op otherwise. */
void progress_end(progress *p, uint64_t rows_done);

#endif
