#!/usr/bin/python3
"""libengram as someone else's project sees it: installed, then built against.

`cmake --install BUILD --prefix TMP` must put exactly the expected files
(binaries, libengram.so.X.Y.Z with its two links, libengram.a, engram.h,
engram.pc, the CMake package, the systemd unit naming TMP's engram-server,
the man pages). Then the installed engram-server is started, and
examples/hello_engram.c is compiled against TMP only and run against it,
four ways:

  pkg-config engram            shared: NEEDED has libengram.so.N
  pkg-config --static engram   libengram.a (-l:libengram.a in place of
                               -lengram): NEEDED has no libengram
  find_package(engram)         engram::engram (shared) and
                               engram::engram_static, from the tiny CMake
                               project in tests/install/consumer, which also
                               checks the version file refuses engram 1.0

Each run imports its own 4-row table and must print exactly the rows it
stored. The header is also compiled as C++ and linked (an inference engine
in C++ includes it), when a C++ compiler is there.

usage: install_test.py --build-dir B --source-dir S --cmake CMAKE --cc CC
         --pkg-config PKGCONFIG --version V --soversion N --config CFG
         --libdir L --bindir B --includedir I --mandir M --unitdir U
         [--manpages] [--flags "-fsanitize=..."]
"""
import argparse
import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

ARGS = None


def read(path):
    with open(path) as f:
        return f.read()


def run(cmd, env=None, cwd=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (" ".join(map(shlex.quote, cmd)),
                                                       p.returncode, p.stdout, p.stderr))
    return p.stdout


def needed(path):
    return re.findall(r"^\s*NEEDED\s+(\S+)", run(["objdump", "-p", path]), re.M)


class Installed(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="engram-install-")
        cls.prefix = os.path.join(cls.tmp, "prefix")
        cls.server = None
        run([ARGS.cmake, "--install", ARGS.build_dir, "--prefix", cls.prefix])
        cls.libdir = os.path.join(cls.prefix, ARGS.libdir)
        port_file = os.path.join(cls.tmp, "port")
        cls.log = os.path.join(cls.tmp, "server.log")
        with open(cls.log, "w") as log:
            cls.server = subprocess.Popen(
                [os.path.join(cls.prefix, ARGS.bindir, "engram-server"), "--data",
                 os.path.join(cls.tmp, "data"), "--listen", "127.0.0.1:0", "--port-file",
                 port_file, "--threads", "2"], stdout=log, stderr=log)
        deadline = time.time() + 30
        while True:
            try:
                with open(port_file) as f:
                    cls.address = "127.0.0.1:%d" % int(f.read())
                break
            except (OSError, ValueError):
                if time.time() > deadline or cls.server.poll() is not None:
                    raise RuntimeError("installed engram-server did not start:\n" +
                                       read(cls.log))
                time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        if cls.server:
            cls.server.terminate()
            try:
                cls.server.wait(30)
            except subprocess.TimeoutExpired:
                cls.server.kill()
                cls.server.wait()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # ---- what is installed

    def test_files(self):
        v, so = ARGS.version, ARGS.soversion
        L, cmakedir = ARGS.libdir, ARGS.libdir + "/cmake/engram"
        want = {
            ARGS.bindir + "/engram-server": None,
            ARGS.bindir + "/engramctl": None,
            "%s/libengram.so.%s" % (L, v): None,
            "%s/libengram.so.%s" % (L, so): "libengram.so.%s" % v,
            L + "/libengram.so": "libengram.so.%s" % so,
            L + "/libengram.a": None,
            L + "/pkgconfig/engram.pc": None,
            ARGS.includedir + "/engram/engram.h": None,
            cmakedir + "/engramConfig.cmake": None,
            cmakedir + "/engramConfigVersion.cmake": None,
            cmakedir + "/engramTargets.cmake": None,
            cmakedir + "/engramTargets-%s.cmake" % (ARGS.config.lower() or "noconfig"): None,
            ARGS.unitdir + "/engram-server.service": None,
        }
        if ARGS.manpages:
            want[ARGS.mandir + "/man1/engram-server.1.gz"] = None
            want[ARGS.mandir + "/man1/engramctl.1.gz"] = None
        got = {}
        for root, dirs, files in os.walk(self.prefix):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                p = os.path.join(root, name)
                rel = os.path.relpath(p, self.prefix)
                if rel.startswith("data/") or not p.startswith(self.prefix + "/"):
                    continue
                got[rel] = os.readlink(p) if os.path.islink(p) else None
        self.assertEqual(got, want)
        for b in ("engram-server", "engramctl"):
            self.assertTrue(os.access(os.path.join(self.prefix, ARGS.bindir, b), os.X_OK))

    def test_installed_header_is_the_source_one(self):
        with open(os.path.join(self.prefix, ARGS.includedir, "engram/engram.h")) as a, \
                open(os.path.join(ARGS.source_dir, "client/include/engram/engram.h")) as b:
            self.assertEqual(a.read(), b.read())

    def test_unit_runs_the_installed_server(self):
        unit = read(os.path.join(self.prefix, ARGS.unitdir, "engram-server.service"))
        exec_start = re.findall(r"^ExecStart=(\S+)", unit, re.M)
        self.assertEqual(exec_start, [os.path.join(self.prefix, ARGS.bindir, "engram-server")])
        src = read(os.path.join(ARGS.source_dir, "deploy/systemd/engram-server.service"))
        # Only ExecStart's path differs from deploy/systemd's unit.
        self.assertEqual(re.sub(r"(?m)^ExecStart=\S+", "", unit),
                         re.sub(r"(?m)^ExecStart=\S+", "", src))

    def test_man_pages(self):
        if not ARGS.manpages:
            self.skipTest("built with ENGRAM_MANPAGES=OFF")
        for prog, option in (("engram-server", "listen"), ("engramctl", "server")):
            with gzip.open(os.path.join(self.prefix, ARGS.mandir, "man1", prog + ".1.gz"),
                           "rt") as f:
                page = f.read()
            self.assertIn('.TH %s "1"' % prog.upper(), page)
            self.assertIn("%s %s" % (prog, ARGS.version), page)
            self.assertIn(r"\fB\-\-%s\fR" % option, page)  # an option from --help

    # ---- building against it

    def expected_output(self, table):
        return ("libengram {v} (built against {v})\n"
                "imported {t}: 4 rows of 16 bytes, version 1\n"
                "row 3: 3 3.25 3.5 3.75\n"
                "row 1: 1 1.25 1.5 1.75\n"
                "rows match\n").format(v=ARGS.version, t=table)

    def check_run(self, exe, table, shared):
        deps = needed(exe)
        if shared:
            self.assertIn("libengram.so.%s" % ARGS.soversion, deps)
        else:
            self.assertEqual([d for d in deps if d.startswith("libengram")], [])
        self.assertEqual(run([exe, self.address, table]), self.expected_output(table))

    def pkg_config(self, *args):
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(self.libdir, "pkgconfig"))
        return shlex.split(run([ARGS.pkg_config] + list(args) + ["engram"], env=env))

    def test_pkg_config(self):
        self.assertEqual(self.pkg_config("--modversion"), [ARGS.version])
        self.assertEqual(self.pkg_config("--variable=prefix"), [self.prefix])
        example = os.path.join(ARGS.source_dir, "examples", "hello_engram.c")
        flags = shlex.split(ARGS.flags)
        warn = ["-std=c11", "-Wall", "-Wextra", "-Werror"]
        with self.subTest("shared"):
            exe = os.path.join(self.tmp, "hello_pc")
            run([ARGS.cc] + warn + flags + self.pkg_config("--cflags") + [example, "-o", exe] +
                self.pkg_config("--libs") + ["-Wl,-rpath," + self.libdir])
            self.check_run(exe, "hello_pc", shared=True)
        with self.subTest("static"):
            cflags = self.pkg_config("--cflags", "--static")
            self.assertIn("-DENGRAM_STATIC", cflags)
            # Both libraries are installed; -l:libengram.a picks the archive,
            # and the rest of --static's list must be enough to link it.
            libs = ["-l:libengram.a" if a == "-lengram" else a
                    for a in self.pkg_config("--libs", "--static")]
            self.assertIn("-l:libengram.a", libs)
            exe = os.path.join(self.tmp, "hello_pc_static")
            run([ARGS.cc] + warn + flags + cflags + [example, "-o", exe] + libs)
            self.check_run(exe, "hello_pc_static", shared=False)

    def test_pip_install_python_package(self):
        """`pip install ./python` offline, in a fresh venv, against the
        installed libengram found with pkg-config; the package then talks
        to the installed server."""
        if "-fsanitize" in ARGS.flags:
            self.skipTest("a sanitized libengram cannot load into python")
        if subprocess.run(["/usr/bin/python3", "-c", "import venv, ensurepip, numpy"]).returncode:
            self.skipTest("python3-venv, python3-pip or python3-numpy is not installed")
        venv = os.path.join(self.tmp, "venv")
        run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv])
        src = os.path.join(self.tmp, "python-src")   # pip builds in the tree it is given
        shutil.copytree(os.path.join(ARGS.source_dir, "python"), src,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(self.libdir, "pkgconfig"))
        env.pop("ENGRAM_BUILD_DIR", None)
        run([os.path.join(venv, "bin", "pip"), "install", "-q", "--no-index", src], env=env,
            cwd=self.tmp)
        script = ("import engram, numpy as np\n"
                  "c = engram.Client(%r)\n"
                  "a = np.arange(64, dtype=np.uint8).reshape(4, 16)\n"
                  "t = c.import_array('pip_t', a)\n"
                  "print(engram.__version__, engram.__file__.startswith(%r), t.rows,\n"
                  "      (c.lookup('pip_t', [3, 0]) == a[[3, 0]]).all())\n"
                  % (self.address, venv))
        out = run([os.path.join(venv, "bin", "python"), "-c", script], cwd=self.tmp,
                  env=dict(os.environ, LD_LIBRARY_PATH=self.libdir))
        self.assertEqual(out, "%s True 4 True\n" % ARGS.version)

    def test_cplusplus(self):
        cxx = shutil.which("c++") or shutil.which("g++")
        if not cxx:
            self.skipTest("no C++ compiler")
        src = os.path.join(self.tmp, "hello.cpp")
        with open(src, "w") as f:
            f.write('#include <engram/engram.h>\n#include <cstdio>\n#include <cstring>\n'
                    'int main() {\n'
                    '    engram_client_options o;\n'
                    '    engram_client_options_init(&o);\n'
                    '    std::printf("%s %s\\n", engram_version(), engram_status_name(ENGRAM_NOT_FOUND));\n'
                    '    return std::strcmp(engram_version(), ENGRAM_VERSION_STRING) != 0;\n'
                    '}\n')
        exe = os.path.join(self.tmp, "hello_cpp")
        run([cxx, "-Wall", "-Wextra", "-Werror", "-pedantic"] + shlex.split(ARGS.flags) +
            self.pkg_config("--cflags") + [src, "-o", exe] + self.pkg_config("--libs") +
            ["-Wl,-rpath," + self.libdir])
        self.assertEqual(run([exe]), "%s NOT_FOUND\n" % ARGS.version)

    def test_find_package(self):
        build = os.path.join(self.tmp, "consumer")
        flags = ARGS.flags
        run([ARGS.cmake, "-S", os.path.join(ARGS.source_dir, "tests", "install", "consumer"),
             "-B", build, "-DCMAKE_PREFIX_PATH=" + self.prefix, "-DCMAKE_C_COMPILER=" + ARGS.cc,
             "-DCMAKE_C_FLAGS=" + flags, "-DCMAKE_EXE_LINKER_FLAGS=" + flags,
             "-DENGRAM_EXAMPLE=" + os.path.join(ARGS.source_dir, "examples", "hello_engram.c"),
             "-DEXPECT_VERSION=" + ARGS.version])
        run([ARGS.cmake, "--build", build])
        self.check_run(os.path.join(build, "hello_shared"), "hello_cmake", shared=True)
        self.check_run(os.path.join(build, "hello_static"), "hello_cmake_static", shared=False)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    for a in ("build-dir", "source-dir", "cmake", "cc", "pkg-config", "version", "soversion",
              "libdir", "bindir", "includedir", "mandir", "unitdir"):
        p.add_argument("--" + a, required=True)
    p.add_argument("--config", default="")
    p.add_argument("--manpages", action="store_true")
    p.add_argument("--flags", default="")
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
