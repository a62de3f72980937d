/* progress.c: import progress on stderr (see progress.h). The bar is
 * redrawn at most 10 times a second with \r, so it costs nothing next to
 * the import; plain lines come every `every` seconds and never use \r,
 * because log collectors keep \r-joined lines as one ever-growing line. */
#include "progress.h"

#include <stdio.h>
#include <unistd.h>

#include "grpc_util.h"

#define BAR_REDRAW_NS 100000000ull
#define BAR_WIDTH 30

static uint32_t every_s = 10;

void progress_set_every(uint32_t seconds)
{
    every_s = seconds;
}

void progress_start(progress *p, const char *what, uint64_t total_rows, uint32_t row_bytes)
{
    p->what = what;
    p->total_rows = total_rows;
    p->row_bytes = row_bytes;
    p->t0_ns = p->last_ns = now_ns();
    p->tty = isatty(fileno(stderr));
    p->drawn = 0;
}

/* MB/s so far and the seconds left at that rate (-1: unknown yet). */
static void rates(const progress *p, uint64_t done, uint64_t now, double *mbs, double *eta)
{
    double s = (double)(now - p->t0_ns) / 1e9;
    double rows_s = s > 0 ? (double)done / s : 0;
    *mbs = rows_s * p->row_bytes / 1e6;
    *eta = rows_s > 0 ? (double)(p->total_rows - done) / rows_s : -1;
}

static void draw_bar(progress *p, uint64_t done, uint64_t now)
{
    double mbs, eta, frac = p->total_rows ? (double)done / (double)p->total_rows : 1;
    rates(p, done, now, &mbs, &eta);
    char bar[BAR_WIDTH + 1];
    int fill = (int)(frac * BAR_WIDTH);
    for (int i = 0; i < BAR_WIDTH; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[BAR_WIDTH] = '\0';
    fprintf(stderr, "\r%s [%s] %llu/%llu rows %3.0f%% %7.1f MB/s ETA %5.0fs\033[K", p->what,
            bar, (unsigned long long)done, (unsigned long long)p->total_rows, frac * 100, mbs,
            eta < 0 ? 0 : eta);
    fflush(stderr);
    p->drawn = 1;
}

static void plain_line(const progress *p, uint64_t done, uint64_t now)
{
    double mbs, eta;
    rates(p, done, now, &mbs, &eta);
    fprintf(stderr, "%s: %llu of %llu rows (%.0f%%), %.1f MB/s, ETA %.0f s\n", p->what,
            (unsigned long long)done, (unsigned long long)p->total_rows,
            p->total_rows ? 100.0 * (double)done / (double)p->total_rows : 100.0, mbs,
            eta < 0 ? 0 : eta);
}

void progress_update(progress *p, uint64_t rows_done)
{
    uint64_t now = now_ns();
    uint64_t gap = p->tty ? BAR_REDRAW_NS : (uint64_t)every_s * 1000000000ull;
    if ((!p->tty && every_s == 0) || now - p->last_ns < gap)
        return;
    p->last_ns = now;
    if (p->tty)
        draw_bar(p, rows_done, now);
    else
        plain_line(p, rows_done, now);
}

void progress_end(progress *p, uint64_t rows_done)
{
    if (!p->tty)
        return;
    draw_bar(p, rows_done, now_ns());
    fputc('\n', stderr);
}
