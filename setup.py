"""Build mithridate's pybind11 extensions from csrc/.

The CPU module ``mithridate._C`` is always built. The CUDA module
``mithridate._C_cuda`` is built when nvcc is found (``CUDA_HOME``,
``CUDA_PATH``, ``PATH``, then /usr/local/cuda); ``MITHRIDATE_CUDA=0`` skips it and
``MITHRIDATE_CUDA=1`` makes a missing nvcc an error. ``MITHRIDATE_CUDA_ARCH``
lists the GPU architectures, e.g. ``"80;90"`` (default ``"80;90"``, plus PTX
of the last one so newer GPUs JIT it).
"""
import os
import re
import shutil
import tempfile
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup
from setuptools.errors import CompileError, LinkError


def cuda_home():
    """The CUDA toolkit root (holding bin/nvcc and include/), or None."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  nvcc and os.path.dirname(os.path.dirname(os.path.realpath(nvcc))),
                  "/usr/local/cuda"]  # nvcc on PATH may be a wrapper script elsewhere
    for root in filter(None, candidates):
        if os.path.isfile(os.path.join(root, "bin", "nvcc")) and \
                os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


def gencode_flags():
    archs = re.findall(r"\d+", os.environ.get("MITHRIDATE_CUDA_ARCH", "80;90").replace(".", ""))
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return flags + [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


def has_openmp(compiler):
    """Whether the compiler builds and links an OpenMP program with -fopenmp."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objs, os.path.join(tmp, "omp"), extra_postargs=["-fopenmp"])
        except (CompileError, LinkError):
            return False
    return True


class BuildExt(build_ext):
    """pybind11's build_ext that also compiles .cu sources with nvcc."""

    def build_extensions(self):
        self.compiler.src_extensions.append(".cu")
        compile_cxx = self.compiler._compile

        def compile_any(obj, src, ext, cc_args, extra_postargs, pp_opts):
            if ext != ".cu":
                return compile_cxx(obj, src, ext, cc_args, extra_postargs, pp_opts)
            # --fmad=false: no FMA contraction, so recomputed sums match bit for bit (hypergrad.h).
            self.spawn([os.path.join(CUDA_HOME, "bin", "nvcc"), "-c", src, "-o", obj, *pp_opts,
                        "-O3", "--std=c++17", "--fmad=false", "-Xcompiler", "-fPIC",
                        *gencode_flags()])

        self.compiler._compile = compile_any
        if has_openmp(self.compiler):  # else the host loops run on one thread
            for ext in self.extensions:
                if ext.name == "mithridate._C":
                    ext.extra_compile_args.append("-fopenmp")
                    ext.extra_link_args.append("-fopenmp")
        super().build_extensions()

    def run(self):
        super().run()
        if CUDA_HOME is None:  # drop a _C_cuda that an earlier CUDA build left in build/
            for stale in glob(os.path.join(self.build_lib, "mithridate", "_C_cuda*")):
                os.remove(stale)


headers = sorted(glob("csrc/include/*.h"))  # rebuild when a shared header changes
ext_modules = [
    Pybind11Extension("mithridate._C", sorted(glob("csrc/cpu/*.cpp")), depends=headers,
                      include_dirs=["csrc/include"], cxx_std=17,
                      # no FMA contraction: recomputed sums match bit for bit (csrc/include/hypergrad.h)
                      extra_compile_args=["-O3", "-ffp-contract=off"]),
]

want_cuda = os.environ.get("MITHRIDATE_CUDA", "auto")
CUDA_HOME = cuda_home() if want_cuda != "0" else None
if want_cuda == "1" and CUDA_HOME is None:
    raise RuntimeError("MITHRIDATE_CUDA=1 but nvcc was not found: set CUDA_HOME or put nvcc on PATH")
if CUDA_HOME is not None:
    # cudart is linked statically: the module then needs only the driver at run time.
    ext_modules.append(Pybind11Extension(
        "mithridate._C_cuda", sorted(glob("csrc/cuda/*.cpp") + glob("csrc/cuda/*.cu")),
        depends=headers, include_dirs=["csrc/include", os.path.join(CUDA_HOME, "include")],
        library_dirs=[os.path.join(CUDA_HOME, "lib64")],
        libraries=["cudart_static", "dl", "rt", "pthread"],
        cxx_std=17, extra_compile_args=["-O3"],
    ))

setup(
    packages=["mithridate", "mithridate.reference", "mithridate.kernels",
              "mithridate.kernels.cpu", "mithridate.kernels.gpu",
              "mithridate.attacks", "mithridate.hypergrad", "mithridate.models",
              "mithridate.datasets", "mithridate.experiments", "mithridate.defenses",
              "mithridate.integrations"],
    package_dir={"mithridate.kernels": "kernels"},  # see kernels/__init__.py
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
)
