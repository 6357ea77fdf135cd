"""Build iteach_fast and its extension ``iteach_fast._C``.

* CUDA extension when nvcc and a CUDA build of torch are present,
* CPU-only C++ extension otherwise,
* no extension at all with ``ITEACH_FAST_NO_EXT=1``.

``TORCH_CUDA_ARCH_LIST`` is honoured. Unset, it is the architecture of this machine's GPUs
(e.g. ``9.0`` on an H100: a quarter of the nvcc time of a multi-architecture build), or
``8.0;9.0`` on a machine without a GPU (so that it does not compile every architecture).

An extension already built in place from the same sources, for the same torch, with CUDA for
every architecture asked for, is not built again (a fingerprint in ``build/``): a plain
``pip install --no-build-isolation --no-deps -e .`` after ``setup.py build_ext --inplace`` (or
the other way round) compiles once.
"""
import glob
import hashlib
import json
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
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    with_cuda = bool(cuda_home and torch.version.cuda and cu_sources)
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        local = _local_archs(torch)
        os.environ["TORCH_CUDA_ARCH_LIST"] = local or "8.0;9.0"
        if local:
            print(f"iteach_fast: building for this machine's GPU architecture {local} (TORCH_CUDA_ARCH_LIST unset)",
                  file=sys.stderr)
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
    ext.fingerprint = _fingerprint(torch, with_cuda)
    return [ext], {"build_ext": _build_ext_class(BuildExtension)}


def _local_archs(torch):
    """This machine's GPU architectures as ``TORCH_CUDA_ARCH_LIST`` spells them (``"9.0"``), or
    None without a GPU."""
    try:
        if not torch.cuda.is_available():
            return None
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    except RuntimeError:  # a driver that does not answer: build the default list
        return None
    return ";".join(f"{major}.{minor}" for major, minor in caps)


FINGERPRINT = os.path.join(ROOT, "build", "iteach_fast-_C.fingerprint.json")
#: written beside the extension: the torch it was built against (iteach_fast.ops.cpp compares it
#: with the torch it runs with, and says to rebuild rather than load a mismatched extension)
BUILD_INFO = "_build_info.py"


def _write_build_info(folders, wanted: dict) -> None:
    text = ('"""Written by setup.py when it builds iteach_fast._C (not tracked): what it was built against."""\n'
            f"TORCH_VERSION = {wanted['torch']!r}\nCUDA = {wanted['cuda']!r}\n")
    for folder in dict.fromkeys(os.path.abspath(f) for f in folders):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, BUILD_INFO), "w") as f:
            f.write(text)


def _fingerprint(torch, with_cuda: bool) -> dict:
    """What the extension is built from: the sources, this file, torch, Python, and (CUDA) the
    architectures asked for."""
    digest = hashlib.sha256()
    files = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True)) + [os.path.abspath(__file__)]
    for path in files:
        if os.path.isfile(path):
            digest.update(os.path.relpath(path, ROOT).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
    return {"sources": digest.hexdigest(), "version": VERSION, "torch": torch.__version__,
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "cuda": with_cuda,
            "archs": sorted(a for a in re.split(r"[;\s]+", archs) if a)}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _up_to_date(wanted: dict, built: str) -> bool:
    """Whether the extension at ``built`` came from ``wanted``'s sources and torch, with CUDA
    for every architecture ``wanted`` asks for (a build for more is as good)."""
    try:
        with open(FINGERPRINT) as f:
            had = json.load(f)
    except (OSError, ValueError):
        return False
    same = all(had.get(k) == wanted[k] for k in ("sources", "version", "torch", "python", "cuda"))
    return (same and set(wanted["archs"]) <= set(had.get("archs", ())) and os.path.exists(built)
            and had.get("sha256") == _sha256(built))


def _build_ext_class(base):
    class BuildExt(base):
        """torch's BuildExtension that skips an extension already built in place from the same
        fingerprint (and records the fingerprint of what it builds)."""

        def build_extension(self, ext):
            target = self.get_ext_fullpath(ext.name)
            in_place = os.path.join(ROOT, *ext.name.split(".")[:-1], os.path.basename(target))
            wanted = getattr(ext, "fingerprint", None)
            if wanted is not None and _up_to_date(wanted, in_place):
                if os.path.abspath(target) != os.path.abspath(in_place):  # an editable install copies it back
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copy2(in_place, target)
                archs = f" with CUDA for {';'.join(wanted['archs'])}" if wanted["cuda"] else " (CPU only)"
                print(f"iteach_fast: {ext.name} is up to date{archs}: not rebuilt (fingerprint in build/)",
                      file=sys.stderr)
                _write_build_info((os.path.dirname(target), os.path.dirname(in_place)), wanted)
                return
            if os.path.exists(FINGERPRINT):
                os.remove(FINGERPRINT)  # stale from here on, whatever happens to this build
            super().build_extension(ext)
            if wanted is not None and os.path.exists(target):
                _write_build_info((os.path.dirname(target),), wanted)  # the wheel's copy (build/lib)
                os.makedirs(os.path.dirname(FINGERPRINT), exist_ok=True)
                with open(FINGERPRINT, "w") as f:
                    json.dump({**wanted, "sha256": _sha256(target)}, f, indent=1)

        def copy_extensions_to_source(self):
            """--inplace and editable installs: the extension and what it was built against beside the sources."""
            super().copy_extensions_to_source()
            for ext in self.extensions:
                if getattr(ext, "fingerprint", None) is not None:
                    _write_build_info((os.path.join(ROOT, *ext.name.split(".")[:-1]),), ext.fingerprint)

    return BuildExt


ext_modules, cmdclass = _extensions()

setup(
    name="iteach_fast",
    version=VERSION,
    description="Fused GPU kernels and drop-in PyTorch modules for ITEACH-Net "
                "(incomplete multimodal emotion recognition in conversation)",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["iteach_fast", *(f"iteach_fast.{tier}" for tier in TIERS), "iteach_fast.kernels"],
    package_dir={"iteach_fast": "iteach_fast", "iteach_fast.kernels": "kernels"},
    package_data={"iteach_fast.reproduce": ["paper_results.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    # every third-party module the package imports (triton: the GPU kernels, an extra)
    install_requires=["torch>=2.11", "numpy", "scikit-learn", "tqdm", "matplotlib", "PyYAML"],
    extras_require={"triton": ["triton>=3.6"], "test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["iteach-fast=iteach_fast.cli:main"]},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
