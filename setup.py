"""Build iteach_fast and its extension ``iteach_fast._C``.

* CUDA extension when nvcc and a CUDA build of torch are present,
* CPU-only C++ extension otherwise,
* no extension at all with ``ITEACH_FAST_NO_EXT=1``.

``TORCH_CUDA_ARCH_LIST`` is honoured; it defaults to ``8.0;9.0`` so that a build on a
machine without a GPU does not compile every architecture.
"""
import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# the version lives in iteach_fast/__init__.py only; the extension gets it as a macro (unquoted:
# ninja's shell would strip quotes; csrc/extension.cpp stringifies it)
with open(os.path.join(ROOT, "iteach_fast", "__init__.py")) as _f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', _f.read(), re.M).group(1)
# the stable ABI of Python 3.10+: csrc/extension.cpp uses only PyModuleDef / PyModule_Create;
# torch's BuildExtension defines the same Py_LIMITED_API value for py_limited_api extensions
LIMITED_API = ("Py_LIMITED_API", "0x030A0000")
#: the package's subpackages, one per tier (docs/architecture.md)
TIERS = ("ops", "nn", "data", "training", "evaluation", "reproduce")


def _cuda_home():
    """The CUDA toolkit's own folder, or None.

    ``nvcc`` on PATH may be a wrapper script outside the toolkit, so torch's guess
    (``dirname(dirname(which nvcc))``) can be wrong: accept a folder only if it holds
    ``include/cuda_runtime.h``.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "include", "cuda_runtime.h")) and os.path.exists(
            os.path.join(c, "bin", "nvcc")
        ):
            return os.path.realpath(c)
    return None


def _extensions():
    if os.environ.get("ITEACH_FAST_NO_EXT", "0") == "1":
        print("iteach_fast: ITEACH_FAST_NO_EXT=1, skipping the C++/CUDA extension", file=sys.stderr)
        return [], {}
    cuda_home = _cuda_home()
    if cuda_home:
        # must be set before torch.utils.cpp_extension is imported: it reads it at import time
        os.environ["CUDA_HOME"] = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    with_cuda = bool(cuda_home and torch.version.cuda and cu_sources)
    # no -std flag: torch's cpp_extension picks the standard its headers need (C++17 or 20)
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]  # as torch builds: lets loops with selects vectorise
    include_dirs = [os.path.join(ROOT, "csrc")]
    # cusparse.h and friends of the pip CUDA wheels (torch's headers include them)
    import site

    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        for inc in glob.glob(os.path.join(sp, "nvidia", "cu*", "include")):
            include_dirs.append(inc)
    if with_cuda:
        print(f"iteach_fast: building the CUDA extension (CUDA_HOME={cuda_home}, "
              f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})", file=sys.stderr)
        ext = CUDAExtension(
            "iteach_fast._C",
            cpp_sources + cu_sources,
            include_dirs=include_dirs,
            define_macros=[("ITEACH_FAST_WITH_CUDA", "1"), ("ITEACH_FAST_VERSION", VERSION), LIMITED_API],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    else:
        why = "no CUDA toolkit found" if not cuda_home else (
            "torch is a CPU build" if not torch.version.cuda else "no CUDA sources")
        print(f"iteach_fast: building the CPU-only extension ({why})", file=sys.stderr)
        ext = CppExtension(
            "iteach_fast._C",
            cpp_sources,
            include_dirs=include_dirs,
            define_macros=[("ITEACH_FAST_VERSION", VERSION), LIMITED_API],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    name="iteach_fast",
    version=VERSION,
    description="Fused GPU kernels and drop-in PyTorch modules for ITEACH-Net "
                "(incomplete multimodal emotion recognition in conversation)",
    packages=["iteach_fast", *(f"iteach_fast.{tier}" for tier in TIERS), "iteach_fast.kernels"],
    package_dir={"iteach_fast": "iteach_fast", "iteach_fast.kernels": "kernels"},
    package_data={"iteach_fast.reproduce": ["paper_results.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy", "scikit-learn", "tqdm", "matplotlib"],
    extras_require={"triton": ["triton>=3.6"], "test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["iteach-fast=iteach_fast.cli:main"]},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
