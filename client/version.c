/* version.c: the library's own version, so a program can tell which
 * libengram.so it loaded (the header's macros say what it was built with). */
#include "engram/engram.h"

const char *engram_version(void)
{
    return ENGRAM_VERSION_STRING;
}

unsigned engram_version_number(void)
{
    return ENGRAM_VERSION_NUMBER;
}
