"""setup.py: `pip install ./python` builds the engram package's C extension
against an installed libengram, found with pkg-config (`engram.pc`, from
`cmake --install` or the libengram-dev package), or against a build tree
when ENGRAM_BUILD_DIR names one (its client/libengram.so and this
checkout's headers; the extension then finds the library by RUNPATH).

Plain setuptools from Debian (python3-setuptools) and no pyproject.toml, so
pip builds it offline with the setuptools already installed instead of
fetching one into an isolated environment."""
import os
import subprocess

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def pkg_config(*args):
    try:
        return subprocess.check_output(["pkg-config"] + list(args) + ["engram"],
                                       text=True).split()
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("engram: libengram not found: install it (cmake --install BUILD, or "
                         "the libengram-dev package) so `pkg-config engram` finds it, or set "
                         "ENGRAM_BUILD_DIR to a built engram-store tree")


build = os.environ.get("ENGRAM_BUILD_DIR")
if build:
    build = os.path.abspath(build)
    libdir = os.path.join(build, "client")
    ext = Extension("engram._engram", ["engram/_engram.c"],
                    include_dirs=[os.path.join(HERE, "..", "client", "include")],
                    library_dirs=[libdir], runtime_library_dirs=[libdir],
                    libraries=["engram"])
    with open(os.path.join(HERE, "..", "CMakeLists.txt")) as f:
        version = next(line.split("VERSION")[1].split()[0] for line in f
                       if line.startswith("project("))
else:
    flags = pkg_config("--cflags", "--libs")
    ext = Extension("engram._engram", ["engram/_engram.c"],
                    include_dirs=[f[2:] for f in flags if f.startswith("-I")],
                    library_dirs=[f[2:] for f in flags if f.startswith("-L")],
                    libraries=[f[2:] for f in flags if f.startswith("-l")])
    version = pkg_config("--modversion")[0]

setup(
    name="engram",
    version=version,
    description="Python client of engram-store, the Engram memory server (over libengram)",
    packages=["engram"],
    package_data={"engram": ["py.typed", "*.pyi"]},
    ext_modules=[ext],
    install_requires=["numpy"],
    python_requires=">=3.9",
)
