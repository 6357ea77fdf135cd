"""Registers, spills and shared memory of every GPU kernel variant, compiled without a GPU.

    python -m bench.kernel_resources [--arch 90 80] [--out bench/results] [--name kernel-resources-DATE]

Each Triton kernel variant the launchers can pick (every attention kernel x dtype x head dim
16..128 x causal, with the tiles, warps and stages ``kernels/tiles.py`` gives them; the scan and
bias kernels per dtype) is compiled for each architecture as the runtime would compile it for
the paper's shapes (B = 8, L = 110, H = 8, q/k/v head views of (B, L, D) activations): the
launch arguments go through Triton's own binder (pointer alignment, int specialisation), then
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``. ``ptxas -v`` on the PTX
gives registers and spill bytes, Triton's metadata the shared memory; from them an occupancy
estimate (CTAs per SM, limited by registers, shared memory and warps). The CUDA mixture kernels
(``csrc/cuda/routed_mixture.cu``) are compiled with ``nvcc -Xptxas -v`` where nvcc exists.

Writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (a table per architecture), rewritten after
every compiled variant (``"complete": false`` until the last: a run stopped by a time limit keeps
what it compiled), and prints the Markdown. Works with triton 3.6 and 3.8; needs no GPU, only the
CUDA toolkit's (or Triton's) ptxas.
``main(argv)`` returns the exit status (1 if a variant failed to compile or spills beyond the
targets: none in bfloat16 / float16 at head dim <= 128 or float32 at <= 64).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# compiled kernels, not the interpreter: must be unset before triton is imported
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from iteach_fast.kernels import attention, bias, scan  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HEAD_DIMS = (16, 32, 64, 128, 256)  # 256: the largest the launchers take (no spill target)
B, L, H, D, DIST = 8, 110, 8, 1024, 30  # the paper's sizes (D: the modality width before W_fc)
CUDA = torch.device("cuda")  # a device object only: what the launchers decide for a GPU
# per architecture: registers and shared memory per SM, shared memory one CTA may use
SM_LIMITS = {90: dict(regs=65536, smem=233472, smem_cta=232448, warps=64, ctas=32),
             80: dict(regs=65536, smem=167936, smem_cta=166912, warps=64, ctas=32),
             86: dict(regs=65536, smem=102400, smem_cta=101376, warps=48, ctas=16),
             89: dict(regs=65536, smem=102400, smem_cta=101376, warps=48, ctas=24),
             100: dict(regs=65536, smem=233472, smem_cta=232448, warps=64, ctas=32)}


# ----------------------------------------------------------------------------- the variants

def _head_view(dtype, Dh):
    """A (B, H, L, Dh) view of (B, L, H * Dh) activations, as the model passes q, k, v."""
    return torch.empty(B, L, H, Dh, dtype=dtype).transpose(1, 2)


def _attention_args(kernel, dtype, Dh, causal):
    q, k, v, o, do, dq, dk, dv = (_head_view(dtype, Dh) for _ in range(8))
    T = torch.empty(B, H, 3, L)
    lse2, delta = torch.empty(B, H, L), torch.empty(B, H, L)
    rows, dT = torch.empty(3, B, H, L), torch.empty(B, H, 3, L)
    lengths = torch.empty(B, dtype=torch.int64)
    common = (0.125, DIST, L, H, Dh)

    def strides(*ts):
        return [s for t in ts for s in t.stride()]

    if kernel == "fwd":
        return [q, k, v, T, lengths, o, lse2, *common, *strides(q, k, v, o, T)]
    if kernel == "bwd_dq":
        return [q, k, v, T, lengths, o, do, dq, lse2, delta, rows, *common, *strides(q, k, v, o, do, dq, T)]
    return [q, k, v, T, lengths, do, dk, dv, lse2, delta, rows, dT, *common, *strides(q, k, v, do, dk, dv, T)]


def variants(arch: int = 90):
    """``(name, kernel, args, meta, labels)`` of every variant the launchers can pick on sm_``arch``."""
    for dname, dtype in DTYPES.items():
        for Dh in HEAD_DIMS:
            for causal in (False, True):
                for kname, kernel in attention.KERNELS.items():
                    meta = attention.attention_meta(kname, dtype, Dh, causal, True, CUDA, arch)
                    yield (f"attn_{kname}", kernel, _attention_args(kname, dtype, Dh, causal), meta,
                           dict(dtype=dname, head_dim=Dh, causal=causal))
        z, zp = torch.empty(B, L, D, dtype=dtype), torch.empty(B, L, H, dtype=dtype)
        w = torch.empty(H, D, dtype=dtype).t()  # nn.Linear(D, H).weight.T
        T, zp32, lengths = torch.empty(B, H, 3, L), torch.empty(B, L, H), torch.empty(B, dtype=torch.int64)
        c = scan.chunk(DIST, L)
        for has_w, x in ((True, z), (False, zp)):
            meta = dict(scan.scan_meta(c, D if has_w else None, H), HAS_W=has_w,
                        DOT_PRECISION=scan.dot_precision(dtype), WIDE=False)
            meta.setdefault("BLOCK_D", 16)
            args = [x, w if has_w else x, zp32, T, lengths, L, x.shape[2], H, c, *x.stride(),
                    *(w.stride() if has_w else (0, 0)), *T.stride()]
            yield ("prefix" if has_w else "band_tables", scan._tables_kernel, args, meta,
                   dict(dtype=dname, head_dim=None, causal=None))
        for causal in (False, True):
            E = torch.empty(B, H, L, L, dtype=dtype)
            yield ("bias_fwd", bias._bias_fwd_kernel, [T, lengths, E, c, L, H, *T.stride()],
                   bias.bias_meta("fwd", causal, CUDA), dict(dtype=dname, head_dim=None, causal=causal))
            yield ("bias_bwd", bias._bias_bwd_kernel, [E, lengths, T, c, L, H, *E.stride(), *T.stride()],
                   bias.bias_meta("bwd", causal, CUDA), dict(dtype=dname, head_dim=None, causal=causal))
    # the adjoint reads float32 only: one variant
    dT, extra, lengths = torch.empty(B, H, 3, L), torch.empty(B, L, H), torch.empty(B, dtype=torch.int64)
    c = scan.chunk(DIST, L)
    yield ("tables_adjoint", scan._tables_adjoint_kernel,
           [dT, extra, extra, lengths, L, H, c, *dT.stride(), *extra.stride()],
           dict(scan.scan_meta(c, None, H), HAS_EXTRA=True, WIDE=False),
           dict(dtype="float32", head_dim=None, causal=None))


# ----------------------------------------------------------------------------- compiling

def _ptxas() -> str:
    try:
        path = triton.knobs.nvidia.ptxas.path
        if path:
            return path
    except (AttributeError, RuntimeError):
        pass
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"))):
        if home and os.path.exists(os.path.join(home, "bin", "ptxas")):
            return os.path.join(home, "bin", "ptxas")
    raise RuntimeError("no ptxas found: install the CUDA toolkit or a triton wheel that ships one")


def _ptxas_version(ptxas: str) -> str:
    """``ptxas V12.9.86 (triton's)``: the version and where it comes from (no machine path)."""
    out = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
    version = re.search(r"V\d+\.\d+\.\d+", out)
    where = "triton's" if os.path.dirname(triton.__file__) in os.path.realpath(ptxas) else "the CUDA toolkit's"
    return f"ptxas {version.group(0) if version else '(unknown version)'} ({where})"


def _ptxas_report(text: str) -> dict:
    """Registers, spill stores / loads and stack frame (bytes) from ``ptxas -v`` output (one kernel)."""
    regs = re.search(r"Used (\d+) registers", text)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if not regs or not frame:
        raise RuntimeError(f"cannot read ptxas' report:\n{text}")
    return dict(registers=int(regs.group(1)), stack=int(frame.group(1)), spill_stores=int(frame.group(2)),
                spill_loads=int(frame.group(3)))


def _occupancy(arch: int, registers: int, shared: int, num_warps: int) -> dict:
    """CTAs per SM, and what limits it (registers are allocated per warp in units of 256)."""
    lim = SM_LIMITS[arch]
    regs_per_warp = -(-registers * 32 // 256) * 256
    by = {"registers": lim["regs"] // (regs_per_warp * num_warps), "warps": lim["warps"] // num_warps,
          "ctas": lim["ctas"]}
    if shared:
        by["shared memory"] = lim["smem"] // (shared + 1024)  # 1 KB per CTA reserved by the driver
    ctas = min(by.values())
    return dict(ctas_per_sm=ctas, limited_by=min(by, key=by.get), fits=shared <= lim["smem_cta"],
                warps_per_sm=ctas * num_warps)


def compile_launch(kernel, args, meta, arch: int, float_type: str = "fp32"):
    """``(compiled, options)``: one launch of ``kernel`` compiled for sm_``arch`` as the runtime
    would compile it; ``float_type="fp64"`` types the float scalar arguments as Inductor's code
    for a ``triton_op`` does (a kernel must then cast them, or its loop-carried types change)."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    options = {k: meta[k] for k in ("num_warps", "num_stages") if k in meta}
    constexprs = {k: v for k, v in meta.items() if k not in options}
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, _ = binder(*args, **constexprs)
    opts, signature, consts, attrs = kernel._pack_args(backend, options, bound, specialization, None)
    # scalars only: a pointer is "*fp32"
    signature = {k: float_type if t == "fp32" else t for k, t in signature.items()}
    return triton.compile(ASTSource(kernel, signature, consts, attrs), target=target, options=opts.__dict__), opts


def compile_variant(kernel, args, meta, arch: int, ptxas: str) -> dict:
    """Compile one launch of ``kernel`` for sm_``arch`` as the runtime would, and report its resources."""
    compiled, opts = compile_launch(kernel, args, meta, arch)
    ptx_arch = re.search(r"\.target (sm_\w+)", compiled.asm["ptx"]).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(compiled.asm["ptx"])
        run = subprocess.run([ptxas, "-v", f"--gpu-name={ptx_arch}", src, "-o", os.path.join(tmp, "k.o")],
                             capture_output=True, text=True, check=True)
    report = _ptxas_report(run.stdout + run.stderr)
    shared = int(compiled.metadata.shared)
    report.update(shared=shared, num_warps=opts.num_warps, num_stages=opts.num_stages,
                  **_occupancy(arch, report["registers"], shared, opts.num_warps))
    return report


def _compile_row(job) -> dict:
    """One (variant index, arch) of ``variants()``, compiled (in a worker process)."""
    index, arch = job
    name, kernel, args, meta, labels = list(variants(arch))[index]
    tiles = {k: meta[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK", "BLOCK_L", "BLOCK_D") if k in meta}
    row = dict(kernel=name, arch=f"sm_{arch}", **labels, tiles=tiles)
    try:
        row.update(compile_variant(kernel, args, meta, arch, _ptxas()))
    except Exception as err:  # noqa: BLE001  (reported per variant, the run goes on)
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return row


def triton_rows(archs, only: str = "", jobs: int = 1, on_row=None) -> list:
    """Every variant x arch, compiled by ``jobs`` processes (each compile is single-threaded);
    ``on_row(rows)`` after each row (the report is written as it grows: a run stopped by a time
    limit keeps every variant compiled before)."""
    jobs_list = [(i, arch) for arch in archs for i, (name, _, _, _, labels) in enumerate(variants(arch))
                 if only in f"{name} {labels['dtype']} {labels['head_dim']}"]
    rows = []
    with concurrent.futures.ProcessPoolExecutor(max(1, jobs)) as pool:
        for row in pool.map(_compile_row, jobs_list):
            print(_line(row), file=sys.stderr, flush=True)
            rows.append(row)
            if on_row is not None:
                on_row(rows)
    return rows


def cuda_mixture_rows(archs, source: str) -> list:
    """``nvcc -Xptxas -v`` of the CUDA mixture kernels, one row per kernel x arch (empty without nvcc)."""
    nvcc = shutil.which("nvcc") or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/nvcc"))), None)
    if nvcc is None or not os.path.exists(source):
        return [dict(kernel="routed_mixture (CUDA)", error="nvcc or the source not found: skipped")]
    import site

    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    # as setup.py builds it: torch's headers, csrc/, the pip CUDA wheels' headers (cusparse.h, ...)
    dirs = include_paths(device_type="cuda") + [os.path.dirname(os.path.dirname(source))]
    for sp in site.getsitepackages():
        dirs += glob.glob(os.path.join(sp, "nvidia", "cu*", "include"))
    rows = []
    for arch in archs:
        for std in ("c++20", "c++17"):  # the standard torch's headers need (C++20 from torch 2.10 or so)
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [nvcc, "-O3", f"-std={std}", f"-arch=sm_{arch}", "-Xptxas", "-v", "-c", source, "-o",
                       os.path.join(tmp, "m.o"), "-DITEACH_FAST_WITH_CUDA=1", *COMMON_NVCC_FLAGS,
                       *(f"-I{d}" for d in dirs)]
                run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode == 0:
                break
        if run.returncode:
            rows.append(dict(kernel="routed_mixture (CUDA)", arch=f"sm_{arch}",
                             error="nvcc failed: " + " / ".join(line for line in run.stderr.splitlines()
                                                                if "error" in line)[:300]))
            continue
        # ptxas prints, per kernel: "Compiling entry function '<mangled>'", then its properties
        for block in re.split(r"ptxas info\s+: Compiling entry function ", run.stderr)[1:]:
            mangled = re.match(r"'([^']+)'", block).group(1)
            rows.append(dict(kernel=_demangle(mangled), arch=f"sm_{arch}", **_ptxas_report(block)))
    return rows


def _demangle(name: str) -> str:
    filt = shutil.which("cu++filt") or shutil.which("c++filt")
    if filt:
        name = subprocess.run([filt, name], capture_output=True, text=True).stdout.strip() or name
    name = name.replace("iteach_fast::", "").replace("(anonymous namespace)::", "")
    return re.sub(r"^void |\(.*", "", name)


# ----------------------------------------------------------------------------- report

def _spills(row) -> int:
    return row.get("spill_stores", 0) + row.get("spill_loads", 0)


def over_target(row) -> bool:
    """Whether a Triton row misses the spill target (none in 16-bit at Dh <= 128, in float32 at Dh <= 64)."""
    if "error" in row:
        return True
    head_dim = row["head_dim"] or 0
    if head_dim > 128 or (row["dtype"] == "float32" and head_dim > 64):
        return False
    return _spills(row) > 0 or not row["fits"]


def _line(row) -> str:
    head = f"{row['kernel']:<16} {row.get('arch', ''):<6} {row.get('dtype') or '':<8} Dh={row.get('head_dim') or '-'}"
    head += f" causal={row.get('causal')}"
    if "error" in row:
        return f"{head}  ERROR {row['error']}"
    return (f"{head}  regs {row['registers']}  spills {row['spill_stores']}/{row['spill_loads']} B"
            f"  smem {row.get('shared', 0)} B  CTAs/SM {row.get('ctas_per_sm', '-')}")


def markdown(result) -> str:
    lines = [f"# Kernel resources ({result['date']})", "",
             f"triton {result['triton_version']}, torch {result['torch']}, {result['ptxas']}. "
             "Compiled without a GPU for the paper's shapes (B = 8, L = 110, H = 8, dist = 30; q/k/v head "
             "views of (B, L, D) activations) with the tiles the launchers pick (`kernels/tiles.py`). "
             "Registers per thread, spill stores / loads in bytes per thread, shared memory per CTA, "
             "CTAs per SM (estimated: registers, shared memory and warps) and what limits them. "
             "Targets: no spills in bfloat16 / float16 at Dh <= 128 and in float32 at Dh <= 64.", ""]
    for arch in result["archs"]:
        lines += [f"## Triton, sm_{arch}", "",
                  "| kernel | dtype | Dh | causal | tiles | warps x stages | regs | spills (st/ld B) | smem (KB) "
                  "| CTAs/SM (limit) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in result["triton"] if r.get("arch") == f"sm_{arch}"):
            tiles = "x".join(str(v) for k, v in r["tiles"].items() if k != "BLOCK_D")
            if "error" in r:
                lines.append(f"| {r['kernel']} | {r['dtype']} | {r['head_dim'] or '-'} | {_yn(r['causal'])} | "
                             f"{tiles} | | | **error**: {r['error']} | | |")
                continue
            spill = f"{r['spill_stores']}/{r['spill_loads']}"
            spill = f"**{spill}**" if _spills(r) else spill
            fits = "" if r["fits"] else " **does not fit**"
            lines.append(f"| {r['kernel']} | {r['dtype']} | {r['head_dim'] or '-'} | {_yn(r['causal'])} | {tiles} | "
                         f"{r['num_warps']} x {r['num_stages']} | {r['registers']} | {spill} | "
                         f"{r['shared'] / 1024:.1f}{fits} | {r['ctas_per_sm']} ({r['limited_by']}) |")
        lines.append("")
    lines += ["## CUDA routed_mixture (nvcc -Xptxas -v)", "", "| kernel | arch | regs | spills (st/ld B) | stack B |",
              "|---|---|---|---|---|"]
    for r in result["cuda"]:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r.get('arch', '')} | | {r['error']} | |")
        else:
            lines.append(f"| `{r['kernel']}` | {r['arch']} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']}"
                         f" | {r['stack']} |")
    missed = [r for r in result["triton"] if over_target(r)]
    lines += ["", f"Variants missing the spill target: {len(missed)} of {len(result['triton'])}."]
    if not result.get("complete", True):
        lines += ["", "**Incomplete**: the run stopped (or is still running) before every variant was compiled."]
    return "\n".join(lines) + "\n"


def write(result: dict, out: str, name: str) -> str:
    """``<out>/<name>.json`` and ``.md`` of ``result``, each replaced atomically; the Markdown's text."""
    text = markdown(result)
    for ext, content in (("json", json.dumps(result, indent=1) + "\n"), ("md", text)):
        path = os.path.join(out, f"{name}.{ext}")
        with open(path + ".tmp", "w") as f:
            f.write(content)
        os.replace(path + ".tmp", path)
    return text


def _yn(causal) -> str:
    return "-" if causal is None else ("yes" if causal else "no")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SM_LIMITS))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--name", default=f"kernel-resources-{datetime.date.today().isoformat()}")
    parser.add_argument("--no-cuda-mixture", action="store_true", help="skip the nvcc compile of the CUDA mixture")
    parser.add_argument("--only", default="", help="only the Triton variants whose 'kernel dtype Dh' holds this")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="compiles in parallel")
    args = parser.parse_args(argv)
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "cuda",
                          "routed_mixture.cu")
    result = dict(date=datetime.date.today().isoformat(), triton_version=triton.__version__, torch=torch.__version__,
                  ptxas=_ptxas_version(_ptxas()), archs=args.arch, complete=False, triton=[], cuda=[])
    os.makedirs(args.out, exist_ok=True)
    write(result, args.out, args.name)

    def grown(rows):
        result["triton"] = rows
        write(result, args.out, args.name)

    result["triton"] = triton_rows(args.arch, args.only, args.jobs, on_row=grown)
    result["cuda"] = [] if args.no_cuda_mixture else cuda_mixture_rows(args.arch, source)
    result["complete"] = True
    print(write(result, args.out, args.name))
    return 1 if any(over_target(r) for r in result["triton"]) else 0


if __name__ == "__main__":
    sys.exit(main())
