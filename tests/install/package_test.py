#!/usr/bin/python3
"""`cpack -G DEB` on the build: four packages with exact contents.

cpack runs with its output (and staging tree) in a temporary directory,
never in the build. Then, per package, read back with dpkg-deb:

  engram-server   usr/bin/engram-server, its man page, the systemd unit
                  (ExecStart=/usr/bin/engram-server)
  engramctl       usr/bin/engramctl, its man page
  libengramN      libengram.so.X.Y.Z and the libengram.so.N link; a
                  DEBIAN/shlibs line "libengram N libengramN (>= X.Y.Z)"
  libengram-dev   engram.h, the libengram.so link, libengram.a, engram.pc
                  (prefix=/usr), the CMake package

exactly those files, owned by root. Depends of the three with binaries must
name exactly the packages that own the libraries in their NEEDED entries
(found here with ldd and dpkg -S, independently of dpkg-shlibdeps),
versions only as lower bounds; libengram-dev must depend on libengramN (= X.Y.Z),
pkg-config, and exactly the -dev packages that own the .pc files engram.pc
requires.

usage: package_test.py --build-dir B --cpack CPACK --pkg-config PKGCONFIG
         --version V --soversion N --config CFG --libdir L [--manpages]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

ARGS = None


def read(path):
    with open(path) as f:
        return f.read()


def run(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (" ".join(cmd), p.returncode,
                                                       p.stdout, p.stderr))
    return p.stdout


def owner_package(path):
    """The Debian package that ships `path` (tried with and without /usr:
    Debian 12 is merged-/usr, and dpkg knows each file by one of the two)."""
    alt = path[4:] if path.startswith("/usr/") else "/usr" + path
    for p in (path, os.path.realpath(path), alt):
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].split(",")[0].strip()
    raise AssertionError("no package owns " + path)


def resolved(path):
    """{soname: path} of the libraries the dynamic loader finds for an ELF file."""
    libs = {}
    for line in run("ldd", path).splitlines():
        m = re.match(r"\s*(\S+) => (/\S+) \(", line)
        if m:
            libs[m.group(1)] = m.group(2)
    return libs


def depends_names(depends):
    """{package: version constraint or ''} from a Depends field."""
    out = {}
    for item in depends.split(","):
        m = re.match(r"\s*([a-z0-9][a-z0-9+.-]*)\s*(\((.*)\))?\s*$", item)
        assert m, "cannot parse Depends item %r" % item
        out[m.group(1)] = m.group(3) or ""
    return out


class Packages(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="engram-cpack-")
        run(ARGS.cpack, "-G", "DEB", "-B", cls.tmp,
            "--config", os.path.join(ARGS.build_dir, "CPackConfig.cmake"))
        cls.arch = run("dpkg", "--print-architecture").strip()
        cls.lib = "libengram" + ARGS.soversion

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def deb(self, name):
        return os.path.join(self.tmp, "%s_%s_%s.deb" % (name, ARGS.version, self.arch))

    def field(self, name, f):
        return run("dpkg-deb", "-f", self.deb(name), f).strip()

    def contents(self, name):
        """{path: link target or None} of the files in a package, owners checked."""
        out = {}
        for line in run("dpkg-deb", "-c", self.deb(name)).splitlines():
            f = line.split(None, 5)
            perms, owner, path = f[0], f[1], f[5]
            self.assertEqual(owner, "root/root", line)
            if perms.startswith("d"):
                continue
            target = None
            if perms.startswith("l"):
                path, target = path.split(" -> ")
            self.assertTrue(path.startswith("./"), line)
            out[path[2:]] = target
        return out

    def extract(self, name):
        d = os.path.join(self.tmp, "x-" + name)
        if not os.path.isdir(d):
            run("dpkg-deb", "-x", self.deb(name), d)
        return d

    def test_package_set(self):
        debs = sorted(f for f in os.listdir(self.tmp) if f.endswith(".deb"))
        want = sorted("%s_%s_%s.deb" % (n, ARGS.version, self.arch)
                      for n in ("engram-server", "engramctl", self.lib, "libengram-dev"))
        self.assertEqual(debs, want)
        for n, section in (("engram-server", "net"), ("engramctl", "net"),
                           (self.lib, "libs"), ("libengram-dev", "libdevel")):
            self.assertEqual(self.field(n, "Package"), n)
            self.assertEqual(self.field(n, "Version"), ARGS.version)
            self.assertEqual(self.field(n, "Architecture"), self.arch)
            self.assertEqual(self.field(n, "Section"), section)

    def test_contents(self):
        v, so, L = ARGS.version, ARGS.soversion, "usr/" + ARGS.libdir
        man = "usr/share/man/man1/"
        want = {
            "engram-server": {"usr/bin/engram-server": None,
                              "usr/lib/systemd/system/engram-server.service": None},
            "engramctl": {"usr/bin/engramctl": None},
            self.lib: {"%s/libengram.so.%s" % (L, v): None,
                       "%s/libengram.so.%s" % (L, so): "libengram.so.%s" % v},
            "libengram-dev": {
                "usr/include/engram/engram.h": None,
                L + "/libengram.so": "libengram.so.%s" % so,
                L + "/libengram.a": None,
                L + "/pkgconfig/engram.pc": None,
                L + "/cmake/engram/engramConfig.cmake": None,
                L + "/cmake/engram/engramConfigVersion.cmake": None,
                L + "/cmake/engram/engramTargets.cmake": None,
                L + "/cmake/engram/engramTargets-%s.cmake" % (ARGS.config.lower() or "noconfig"):
                    None},
        }
        if ARGS.manpages:
            want["engram-server"][man + "engram-server.1.gz"] = None
            want["engramctl"][man + "engramctl.1.gz"] = None
        for name, files in want.items():
            with self.subTest(name):
                self.assertEqual(self.contents(name), files)

    def test_paths_inside_name_usr(self):
        d = self.extract("engram-server")
        unit = read(os.path.join(d, "usr/lib/systemd/system/engram-server.service"))
        self.assertEqual(re.findall(r"^ExecStart=(\S+)", unit, re.M), ["/usr/bin/engram-server"])
        d = self.extract("libengram-dev")
        pc = read(os.path.join(d, "usr", ARGS.libdir, "pkgconfig/engram.pc"))
        self.assertIn("\nprefix=/usr\n", "\n" + pc)
        targets = read(os.path.join(d, "usr", ARGS.libdir, "cmake/engram/engramTargets.cmake"))
        self.assertNotIn(self.tmp, targets)
        self.assertNotIn(ARGS.build_dir, targets)

    def test_shlibs(self):
        d = os.path.join(self.tmp, "ctrl")
        run("dpkg-deb", "-e", self.deb(self.lib), d)
        self.assertEqual(read(os.path.join(d, "shlibs")).strip(),
                         "libengram %s %s (>= %s)" % (ARGS.soversion, self.lib, ARGS.version))

    def test_binary_depends(self):
        v = ARGS.version
        for name, files in (("engram-server", ["usr/bin/engram-server"]),
                            ("engramctl", ["usr/bin/engramctl"]),
                            (self.lib, ["usr/%s/libengram.so.%s" % (ARGS.libdir, v)])):
            with self.subTest(name):
                d = self.extract(name)
                want = set()
                for f in files:
                    path = os.path.join(d, f)
                    found = resolved(path)
                    out = run("objdump", "-p", path)
                    for lib in re.findall(r"^\s*NEEDED\s+(\S+)", out, re.M):
                        self.assertIn(lib, found, "%s needs %s, which ldd does not find" % (f, lib))
                        want.add(owner_package(found[lib]))
                deps = depends_names(self.field(name, "Depends"))
                print("%s Depends: %s" % (name, self.field(name, "Depends")))
                self.assertEqual(set(deps), want)
                # Lower bounds from the libraries' shlibs files (some, like
                # libasan8's in a sanitizer build, carry none).
                self.assertEqual([p for p, c in deps.items() if c and not c.startswith(">= ")],
                                 [], "dependencies that are not lower bounds")
                if name != "engram-server":
                    self.assertNotIn("librocksdb", " ".join(deps))  # the client never links it

    def test_dev_depends(self):
        deps = depends_names(self.field("libengram-dev", "Depends"))
        print("libengram-dev Depends:", self.field("libengram-dev", "Depends"))
        self.assertEqual(deps.pop(self.lib), "= " + ARGS.version)
        self.assertEqual(deps.pop("pkg-config"), "")
        d = self.extract("libengram-dev")
        pc = read(os.path.join(d, "usr", ARGS.libdir, "pkgconfig/engram.pc"))
        requires = re.search(r"^Requires\.private:(.*)$", pc, re.M).group(1).split()
        self.assertTrue(requires)
        owners = set()
        for module in requires:
            path = run(ARGS.pkg_config, "--path", module).strip()
            owners.add(owner_package(path))
        self.assertEqual(set(deps), owners)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    for a in ("build-dir", "cpack", "pkg-config", "version", "soversion", "libdir"):
        p.add_argument("--" + a, required=True)
    p.add_argument("--config", default="")
    p.add_argument("--manpages", action="store_true")
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
