#!/usr/bin/python3
"""libengram's ABI surface, read from the built files.

libengram.so: its SONAME is libengram.so.<SOVERSION>, and the dynamic
symbols it defines (nm -D --defined-only) are exactly the functions engram.h
declares with ENGRAM_API, every one a function (T). Nothing else is
allowed: the library, common/ and proto/ are compiled with
-fvisibility=hidden, and Debian 12's binutils put no _init, _fini, _edata,
_end or __bss_start into .dynsym, so any other name is a leak of internal
code (or a declaration that lost its ENGRAM_API, which shows up as a
missing export). Every function declaration in engram.h carries ENGRAM_API.

libengram.a: no global symbol it defines has default visibility (it is
built with ENGRAM_STATIC, so a shared object linking it exports nothing of
it), and every ENGRAM_API function is in it.

engram_version() and engram_version_number(), called through ctypes, give
the project version (skipped in sanitizer builds: ASan cannot be loaded
into python3 after the fact).

usage: exported_symbols_test.py --lib LIBENGRAM_SO --archive LIBENGRAM_A
           --header ENGRAM_H --soversion N --version X.Y.Z [--sanitize]
"""
import argparse
import ctypes
import re
import subprocess
import sys
import unittest

ARGS = None


def read(path):
    with open(path) as f:
        return f.read()


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def header_declarations(text):
    """(names declared with ENGRAM_API, function declarations without it)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    api, bare = set(), []
    for line in text.splitlines():
        m = re.match(r"ENGRAM_API\s+[^;(]*?\b(engram_\w+)\s*\(", line)
        if m:
            api.add(m.group(1))
            continue
        # A declaration starts at column 0 with a type: `int engram_x(`.
        m = re.match(r"(?!typedef|#|ENGRAM_API)[A-Za-z_][^;(=]*?\b(engram_\w+)\s*\(", line)
        if m:
            bare.append(m.group(1))
    return api, bare


class SharedLibrary(unittest.TestCase):
    def test_soname(self):
        sonames = re.findall(r"^\s*SONAME\s+(\S+)", run("objdump", "-p", ARGS.lib), re.M)
        self.assertEqual(sonames, ["libengram.so.%s" % ARGS.soversion])

    def test_header_marks_every_declaration(self):
        api, bare = header_declarations(read(ARGS.header))
        self.assertEqual(bare, [], "declared without ENGRAM_API")
        self.assertIn("engram_version", api)
        self.assertGreater(len(api), 40)

    def test_exports_are_exactly_the_api(self):
        api, _ = header_declarations(read(ARGS.header))
        exported = {}
        for line in run("nm", "-D", "--defined-only", ARGS.lib).splitlines():
            parts = line.split()
            exported[parts[-1]] = parts[-2]
        names = set(exported)
        print("libengram.so exports %d symbols" % len(names))
        self.maxDiff = None
        self.assertEqual(sorted(n for n in names if not n.startswith("engram_")), [],
                         "exported symbols outside engram_*")
        self.assertEqual(sorted(names - api), [], "exported but not declared in engram.h")
        self.assertEqual(sorted(api - names), [], "declared in engram.h but not exported")
        self.assertEqual(sorted(n for n, t in exported.items() if t != "T"), [],
                         "exported symbols that are not functions")

    def test_version_at_run_time(self):
        if ARGS.sanitize:
            self.skipTest("sanitizer build: libasan cannot be loaded into python3")
        lib = ctypes.CDLL(ARGS.lib)
        lib.engram_version.restype = ctypes.c_char_p
        lib.engram_version_number.restype = ctypes.c_uint
        self.assertEqual(lib.engram_version().decode(), ARGS.version)
        major, minor, patch = (int(x) for x in ARGS.version.split("."))
        self.assertEqual(lib.engram_version_number(), major * 10000 + minor * 100 + patch)


class StaticLibrary(unittest.TestCase):
    def test_nothing_has_default_visibility(self):
        defined, leaked = set(), []
        for line in run("readelf", "-s", "-W", ARGS.archive).splitlines():
            f = line.split()
            # Num: Value Size Type Bind Vis Ndx Name
            if len(f) < 8 or not f[0].endswith(":") or f[6] == "UND":
                continue
            if f[4] in ("GLOBAL", "WEAK"):
                defined.add(f[7])
                if f[5] != "HIDDEN":
                    leaked.append(f[7])
        self.assertEqual(sorted(leaked), [], "libengram.a symbols with default visibility")
        api, _ = header_declarations(read(ARGS.header))
        self.assertEqual(sorted(api - defined), [], "API functions missing from libengram.a")


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--lib", required=True)
    p.add_argument("--archive", required=True)
    p.add_argument("--header", required=True)
    p.add_argument("--soversion", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--sanitize", action="store_true")
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
