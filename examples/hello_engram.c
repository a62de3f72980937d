/* hello_engram.c: the smallest useful libengram program. It stores a table
 * of 4 rows x 4 floats on a running engram-server, then looks two rows up
 * the way an inference worker does.
 *
 *   hello_engram [HOST:PORT [TABLE]]     (default 127.0.0.1:7070 hello)
 *
 * Build it against an installed libengram (README, "Use libengram from C"):
 *   cc hello_engram.c $(pkg-config --cflags engram) $(pkg-config --libs engram)
 * tests/install builds and runs it that way and through find_package(engram). */
#include <engram/engram.h>

#include <stdio.h>
#include <string.h>

#define ROWS 4
#define DIM 4

static int fail(const char *what, const engram_error *err)
{
    fprintf(stderr, "hello_engram: %s: %s: %s\n", what, engram_status_name(err->code),
            err->message);
    return 1;
}

int main(int argc, char **argv)
{
    const char *address = argc > 1 ? argv[1] : "127.0.0.1:7070";
    const char *table = argc > 2 ? argv[2] : "hello";
    engram_error err;

    /* The header this program was compiled with and the library it runs
     * with should be the same release. */
    printf("libengram %s (built against %s)\n", engram_version(), ENGRAM_VERSION_STRING);
    if (engram_version_number() != ENGRAM_VERSION_NUMBER)
        fprintf(stderr, "hello_engram: warning: header and library versions differ\n");

    engram_client *client;
    if (engram_client_open(address, NULL, &client, &err))
        return fail("open", &err);

    /* Row r holds r, r + 0.25, r + 0.5, r + 0.75. */
    float rows[ROWS][DIM];
    for (int r = 0; r < ROWS; r++)
        for (int d = 0; d < DIM; d++)
            rows[r][d] = (float)r + 0.25f * (float)d;
    engram_import *imp;
    engram_table_info info;
    if (engram_import_begin(client, table, ROWS, DIM, "f32", &imp, &err))
        return fail("import", &err);
    if (engram_import_write(imp, 0, rows, sizeof rows, &err)) {
        engram_import_abort(imp);
        return fail("import", &err);
    }
    if (engram_import_finish(imp, &info, &err))   /* frees imp either way */
        return fail("import", &err);
    printf("imported %s: %llu rows of %u bytes, version %llu\n", info.name,
           (unsigned long long)info.rows, info.row_bytes, (unsigned long long)info.version);

    /* Rows come back in request order, back to back. */
    uint64_t ids[2] = {3, 1};
    float out[2][DIM];
    uint64_t version;
    if (engram_lookup_sync(client, table, ids, 2, out, sizeof out, NULL, &version, &err))
        return fail("lookup", &err);
    for (int i = 0; i < 2; i++)
        printf("row %llu: %g %g %g %g\n", (unsigned long long)ids[i], out[i][0], out[i][1],
               out[i][2], out[i][3]);
    int ok = version == info.version && memcmp(out[0], rows[3], sizeof out[0]) == 0 &&
             memcmp(out[1], rows[1], sizeof out[1]) == 0;
    printf("%s\n", ok ? "rows match" : "ROWS DIFFER");

    engram_client_close(client);
    return ok ? 0 : 1;
}
