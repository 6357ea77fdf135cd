"""``iteach-fast`` (also ``python -m iteach_fast``): train, evaluate, ime, demo, reproduce,
export-synthetic, check-data, bench, info.

Every field of :class:`iteach_fast.training.config.TrainConfig` is a flag (``--batch-size 16``,
``--syn-dims 64,32,48``); ``--config FILE`` (YAML/JSON) sets defaults that flags override.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import typing

import numpy
import torch

from . import __version__
from .choices import BACKENDS, EVAL_MODELS, EXPERIMENTS, PRECISIONS
from .data.check import LAYOUTS, check_data, export_synthetic
from .data.gcnet import GCNET_DATASETS
from .data.masking import EVAL_RATES
from .data.sources import synthetic_spec
from .evaluation.gaps import data_gaps
from .evaluation.predict import FORMATS, predict_file
from .evaluation.protocols import DEMO_DEFAULTS, demo, ime, stream_demo, ume
from .files import atomic_write
from .nn.config import ModelConfig, coerce
from .ops.backends import available_backends
from .reproduce import DEFAULT_SEEDS, QUICK, QUICK_SEEDS, VARIED, reproduce
from .training.checkpoint import RunDirBusy, load_checkpoint, load_for_eval
from .training.config import MODEL_KEYS, TRAIN_KEYS, TrainConfig, load_mapping
from .training.distributed import DistributedError, rank_tag
from .training.loop import RESUME_SETTINGS, train
from .training.runtime import resolve_device

#: the synthetic set's fields that export-synthetic takes, named as for train
EXPORT_KEYS = ("syn_conversations", "syn_min_len", "syn_max_len", "syn_dims", "seed")


def _list_of(kind):
    def parse(text: str):
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}: {text!r}") from err
    return parse


def _flat(rates) -> tuple:
    """``--rates 0,0.3 0.7`` -> ``(0.0, 0.3, 0.7)`` (nargs="+" of comma-separated lists)."""
    return tuple(x for part in rates for x in (part if isinstance(part, tuple) else (part,)))


def _flag_type(name: str, hint):
    """An argparse ``type`` that coerces a flag's text as the config field's type hint does."""
    def parse(text: str):
        try:
            return coerce(text, hint)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _add_config_flags(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """One flag per config field (model fields flattened in); default SUPPRESS so only given
    flags override --config. Types and choices come from the fields' annotations."""
    base = TrainConfig().replace(**(defaults or {})).flat_dict()
    hints = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(ModelConfig)}
    g = p.add_argument_group("training configuration (TrainConfig and its ModelConfig; defaults shown)")
    for name in TRAIN_KEYS + MODEL_KEYS:
        default, hint = base[name], hints[name]
        flag = "--" + name.replace("_", "-")
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        kw = dict(default=argparse.SUPPRESS, dest=name, help=f"(default: {shown})")
        if hint is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        literal = [a for a in (typing.get_args(hint) or (hint,)) if typing.get_origin(a) is typing.Literal]
        if literal:
            kw["choices"] = typing.get_args(literal[0])
        kw["type"] = _flag_type(flag, hint)
        if typing.get_origin(hint) is tuple:
            kw["metavar"] = "A,B,.."
        g.add_argument(flag, **kw)
    p.add_argument("--config", help="YAML or JSON file of config keys, flat or with a model: section "
                                    "(flags override it)")


def config_from_args(args: argparse.Namespace, defaults: dict | None = None) -> TrainConfig:
    cfg = TrainConfig().replace(**(defaults or {}))
    if getattr(args, "config", None):
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **load_mapping(args.config)}, source=args.config)
    given = {k: getattr(args, k) for k in TRAIN_KEYS + MODEL_KEYS if hasattr(args, k)}
    return cfg.replace(**given).validate()


# ------------------------------------------------------------------ subcommands

def cmd_train(args) -> int:
    if args.resume:
        # the checkpoint's own config; flags may raise --epochs or move --out-dir (default:
        # the checkpoint's folder), everything else stays as trained
        ckpt_cfg = TrainConfig.from_dict(load_checkpoint(args.resume)["config"], source=args.resume)
        defaults = {**ckpt_cfg.flat_dict(), "out_dir": os.path.dirname(os.path.abspath(args.resume))}
        cfg = config_from_args(args, defaults)
        ignored = sorted(k for k, v in cfg.flat_dict().items()
                         if k not in RESUME_SETTINGS and v != defaults.get(k))
        if ignored:
            print(f"note: --resume continues the checkpoint's run; these settings are ignored: {ignored}",
                  file=sys.stderr)
    else:
        cfg = config_from_args(args)
    summary = train(cfg, resume=args.resume)
    if summary["rank"] == 0 and summary["best"]:
        print(f"best checkpoint: {summary['best']}\n"
              f"evaluate it with: iteach-fast evaluate --checkpoint {summary['best']}")
    return 0


def cmd_evaluate(args) -> int:
    if args.checkpoint and args.checkpoint_pos and args.checkpoint != args.checkpoint_pos:
        raise ValueError("give the checkpoint once: --checkpoint or CHECKPOINT")
    args.checkpoint = args.checkpoint or args.checkpoint_pos
    if not args.checkpoint:
        raise ValueError("the argument --checkpoint (or CHECKPOINT) is required: a best.pt or last.pt from `train`")
    res = ume(args.checkpoint, out_dir=args.out, rates=_flat(args.rates) if args.rates else None, split=args.split,
              seed=args.seed, batch_size=args.batch_size, device=args.device, backend=args.backend, dtype=args.dtype,
              plots=not args.no_plots, model=args.model)
    written = [f"{k} {v}" for k, v in res["paths"].items() if v]
    if args.gaps:
        net, _, splits, _ = load_for_eval(args.checkpoint, device=args.device, backend=args.backend)
        print()
        gaps = data_gaps(splits, net, split=args.split, device=resolve_device(args.device))
        path = os.path.join(args.out or os.path.dirname(os.path.abspath(args.checkpoint)), "gaps.json")
        atomic_write(path, json.dumps({"split": args.split, "rows": gaps["rows"]}, indent=2))
        written.append(f"gaps {path}")
    print("written: " + ", ".join(written))
    return 0


def cmd_ime(args) -> int:
    cfg = config_from_args(args)
    for rate in _flat(args.rates):  # every rate's run checked before the first one trains
        try:
            cfg.replace(strategy="fixed", rate=rate).validate()
        except ValueError as err:
            raise ValueError(f"--rates {rate}: {err}") from None
    res = ime(cfg, rates=_flat(args.rates), out_dir=os.path.join(cfg.out_dir, "ime"))
    print(f"written under {os.path.join(cfg.out_dir, 'ime')} (ime.json, ime.csv)")
    return 0 if res["rows"] else 1


def cmd_demo(args) -> int:
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    if args.stream:  # a causal model, then one test conversation replayed live
        stream_demo(config_from_args(args, {**DEMO_DEFAULTS, "causal": True,
                                            "out_dir": os.path.join("runs", "demo-stream")}), log=log)
        return 0
    demo(config_from_args(args, DEMO_DEFAULTS), log=log)
    return 0


def cmd_predict(args) -> int:
    res = predict_file(args.checkpoint, args.inputs, out=args.out, fmt=args.format, stream=args.stream,
                       device=args.device, backend=args.backend, batch_size=args.batch_size, dataset=args.dataset,
                       model=args.model)
    if res["path"]:
        print(f"{res['meta']['utterances']} predictions ({res['meta']['conversations']} conversations"
              f"{', streamed' if args.stream else ''}) written to {res['path']}", file=sys.stderr)
    return 0


def cmd_reproduce(args) -> int:
    if getattr(args, "seed", None) is not None or getattr(args, "fold", None) is not None:
        raise ValueError("reproduce runs several seeds and folds: use --seeds and --folds (not --seed / --fold)")
    varied = sorted(k for k in VARIED if hasattr(args, k))
    if varied:
        print(f"note: reproduce sets {', '.join('--' + k.replace('_', '-') for k in varied)} per run (each "
              "table's rows); the values given are ignored", file=sys.stderr)
    defaults = {**(QUICK if args.quick else {}), "out_dir": os.path.join("runs", "reproduce")}
    cfg = config_from_args(args, defaults)
    command = "iteach-fast " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None
    seeds = args.seeds or (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    res = reproduce(args.what, cfg, seeds=seeds, folds=args.folds, jobs=args.jobs, devices=args.devices,
                    command=command, log=lambda *a: print(*a, flush=True))
    return 1 if res["failures"] else 0


def cmd_export_synthetic(args) -> int:
    given = {k: getattr(args, k) for k in EXPORT_KEYS if getattr(args, k) is not None}
    spec = synthetic_spec(TrainConfig().replace(**given).validate())
    res = export_synthetic(args.out, args.dataset, spec, layout=args.layout, overwrite=args.overwrite)
    print(f"wrote {res['dialogues']} dialogues / {res['utterances']} utterances for {args.dataset} in GCNet's layout "
          f"under {args.out}: {res['label_file']}; features in {', '.join(res['feature_roots'].values())}; "
          f"dialogues per {'session' if args.dataset.startswith('iemocap') else 'split'}: "
          + ", ".join(f"{k} {v}" for k, v in res["splits"].items()))
    print(f"train on it: iteach-fast train --dataset {args.dataset} --data-root {args.out}")
    return 0


def cmd_check_data(args) -> int:
    roots = {m: getattr(args, f"{m}_root") for m in ("text", "audio", "visual") if getattr(args, f"{m}_root")}
    report = check_data(args.dataset, args.data_root, label_file=args.label_file, feature_roots=roots)
    print(report.text(max_listed=args.max_listed))
    return 0 if report.ok else 1


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmd_bench(args) -> int:
    """``python -m bench.run`` with the remaining arguments, on the checkout's ``bench/`` (it
    ships with the source checkout, not with the installed package), in this working folder
    (relative paths such as ``--out`` mean what they meant); its exit code is ours."""
    root = _repo_root()
    if not os.path.isfile(os.path.join(root, "bench", "run.py")):
        print(f"iteach-fast bench: error: the benchmark suite is not present ({os.path.join('bench', 'run.py')} "
              "not found next to the package); it ships with the source checkout: run `iteach-fast bench` from an "
              "editable install of the repository (pip install -e .)", file=sys.stderr)
        return 2
    rest = list(args.bench_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    # the checkout first on the path, and not the working folder (PYTHONSAFEPATH): no other `bench` shadows it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
           "PYTHONSAFEPATH": "1"}
    return subprocess.run([sys.executable, "-m", "bench.run", *rest], env=env).returncode


def cmd_info(args) -> int:
    try:
        import triton

        triton_version = triton.__version__
    except Exception as err:  # noqa: BLE001 - any import failure means "not usable"
        triton_version = f"not available ({type(err).__name__})"
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    print(f"iteach_fast {__version__}")
    print(f"python      {platform.python_version()} ({sys.executable})")
    print(f"torch       {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    print(f"triton      {triton_version}")
    print(f"numpy       {numpy.__version__}")
    print(f"CUDA        {'available' if cuda else 'not available'}")
    print(f"device      {torch.cuda.get_device_name(0) if cuda else 'cpu'} "
          f"({torch.get_num_threads()} CPU threads)")
    print(f"backends on {device}:")
    for op, backends in available_backends(device).items():
        for name, why in backends.items():
            print(f"  {op:16s} {name:10s} {'ok' if why is None else 'unavailable: ' + why}")
    return 0


# ------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iteach-fast", description="ITEACH-Net: incomplete multimodal ERC "
                                "(Inverted Teacher-Student training, UME / IME evaluation) and its kernels.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train ITEACH-Net (teacher on complete, student on masked data)",
                       description="Train ITEACH-Net; writes best.pt / last.pt under --out-dir.")
    _add_config_flags(t)
    t.add_argument("--resume", help="a last.pt to continue from (bit-identical continuation)")
    t.set_defaults(func=cmd_train)

    rates = dict(type=_list_of(float), nargs="+", default=EVAL_RATES, metavar="R,R,..",
                 help="missing rates, comma- or space-separated (default: 0.0,0.1,...,0.7)")
    e = sub.add_parser("evaluate", help="UME: test one checkpoint at missing rates 0.0..0.7",
                       description="Unified Model Evaluation: one checkpoint, fixed-seed masks per rate; prints the "
                                   "table, writes ume.json, ume.csv and plots/.")
    e.add_argument("checkpoint_pos", nargs="?", metavar="CHECKPOINT", help="the same as --checkpoint")
    e.add_argument("--checkpoint", help="best.pt or last.pt from `train` (required, or as CHECKPOINT)")
    e.add_argument("--out", help="output folder (default: the checkpoint's folder)")
    e.add_argument("--rates", **{**rates, "default": None,
                                 "help": "missing rates, comma- or space-separated (default: 0.0,0.1,...,0.7; "
                                         "the teacher: 0.0 only)"})
    e.add_argument("--model", choices=EVAL_MODELS, default="student",
                   help="student (default): at each missing rate; teacher: on complete data, as the paper's "
                        "Table 1 (writes teacher.json / teacher.csv)")
    e.add_argument("--split", choices=("test", "valid"), default="test")
    e.add_argument("--seed", type=int, default=0, help="seed of the test masks (default 0)")
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--backend", default=None, choices=BACKENDS)
    e.add_argument("--dtype", default=None, choices=PRECISIONS)
    e.add_argument("--no-plots", action="store_true")
    e.add_argument("--gaps", action="store_true",
                   help="also measure the data's context and modality gaps (classification): a per-utterance "
                        "logistic regression vs one with context features, each modality subset, and the "
                        "checkpoint's student with only those modalities present; writes gaps.json")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("ime", help="IME: train one model per missing rate (fixed strategy), test each at it",
                       description="Independent Model Evaluation; writes <out-dir>/ime/ime.json and ime.csv.")
    _add_config_flags(i)
    i.add_argument("--rates", **rates)
    i.set_defaults(func=cmd_ime)

    shown = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in DEMO_DEFAULTS.items())
    d = sub.add_parser("demo", help="short ITS training on synthetic data, then UME (a few CPU minutes)",
                       description=f"Train on synthetic conversations with a short schedule, then UME; "
                                   f"writes under runs/demo/<framework>/. Demo defaults: {shown}. "
                                   "Any training flag overrides them; --framework pre runs the single-model "
                                   "baseline for comparison.")
    _add_config_flags(d, DEMO_DEFAULTS)
    d.add_argument("--stream", action="store_true",
                   help="train a causal model (under runs/demo-stream/) and replay one test conversation "
                        "utterance by utterance, printing each prediction as it arrives")
    d.set_defaults(func=cmd_demo)

    pr = sub.add_parser("predict", help="a trained checkpoint on new data: one prediction per utterance (CSV/JSON)",
                        description="Predict every utterance of new conversations with a checkpoint's student: "
                                    "INPUTS is a .npz (keys <conversation>/text, /audio, /visual, optional "
                                    "/present (L, 3) bool), a .pt ({conversation: {text, audio, visual, present}}) "
                                    "or a GCNet-layout folder. Rows: conversation, utterance, prediction and class "
                                    "probabilities (or score). --stream replays each conversation utterance by "
                                    "utterance through a causal model: what was known when each utterance arrived.")
    pr.add_argument("checkpoint", help="best.pt or last.pt from `train`")
    pr.add_argument("inputs", help=".npz / .pt of per-conversation arrays, or a GCNet-layout folder")
    pr.add_argument("--out", help="output file, .csv or .json (default: CSV on stdout)")
    pr.add_argument("--format", choices=FORMATS, help="default: from --out's extension (csv otherwise)")
    pr.add_argument("--stream", action="store_true", help="replay utterance by utterance (causal checkpoints)")
    pr.add_argument("--model", choices=EVAL_MODELS, default="student",
                    help="student (default: the incomplete-data model) or teacher")
    pr.add_argument("--dataset", choices=tuple(GCNET_DATASETS),
                    help="the dataset of a GCNet-layout folder (default: the checkpoint's)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--backend", default=None, choices=BACKENDS)
    pr.add_argument("--batch-size", type=int, default=32)
    pr.set_defaults(func=cmd_predict)

    r = sub.add_parser("reproduce", help="the paper's tables and figures: every run, aggregated over folds x seeds",
                       description="Train every run that the paper's Tables 1-5 and Figures 6, 7/8, 9 need (IEMOCAP: "
                                   "each fold; each seed), evaluate them, and write results.csv, one Markdown table "
                                   "per table (mean ± std over folds x seeds, the paper's number and the difference "
                                   "beside ours on the paper's datasets), PNGs and report.md under --out-dir "
                                   "(default runs/reproduce). Finished runs are cached under a hash of their config: "
                                   "re-running resumes. Training flags set the base config; each table sets "
                                   "framework, mixers, ecce, strategy and rate per row.")
    r.add_argument("what", nargs="+", choices=EXPERIMENTS + ("all",), metavar="WHAT",
                   help=f"one or more of {', '.join(EXPERIMENTS)}, or all")
    r.add_argument("--quick", action="store_true",
                   help="the small synthetic set and model, 10 epochs, seed 0 (" + ", ".join(
                       f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in QUICK.items())
                   + "); flags and --seeds still override")
    r.add_argument("--seeds", type=_list_of(int), default=None, metavar="S,S,..",
                   help=f"seeds of the runs (default {','.join(map(str, DEFAULT_SEEDS))}: the paper's three runs; "
                        f"--quick: {','.join(map(str, QUICK_SEEDS))})")
    r.add_argument("--folds", type=_list_of(int), default=None, metavar="K,K,..",
                   help="IEMOCAP's held-out sessions (default 1,2,3,4,5); other datasets have one split")
    r.add_argument("--jobs", type=int, default=1, help="runs trained at once, as processes (default 1)")
    r.add_argument("--devices", type=_list_of(int), default=None, metavar="I,I,..",
                   help="CUDA devices to spread the runs over (e.g. 0,1)")
    _add_config_flags(r, {"out_dir": os.path.join("runs", "reproduce")})
    r.set_defaults(func=cmd_reproduce)

    x = sub.add_parser("export-synthetic", help="write the synthetic conversations in GCNet's file layout",
                       description="Write the synthetic conversations as GCNet's label pickle and per-modality "
                                   "<utterance-id>.npy folders (IEMOCAP: five sessions Ses01..Ses05; CMU-MOSI / "
                                   "MOSEI: train / valid / test ids), so that `train --dataset D --data-root DIR` "
                                   "runs on them.")
    x.add_argument("out", metavar="DIR", help="the folder to write (must be empty, or pass --overwrite)")
    x.add_argument("--layout", choices=LAYOUTS, default="gcnet", help="the file layout (default gcnet)")
    x.add_argument("--dataset", choices=tuple(GCNET_DATASETS), default="iemocap4",
                   help="the dataset whose layout and classes to write (default iemocap4)")
    x.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    hints = typing.get_type_hints(TrainConfig)
    for key in EXPORT_KEYS:
        flag = "--" + key.replace("_", "-")
        x.add_argument(flag, dest=key, default=None, type=_flag_type(flag, hints[key]),
                       help=f"as for train (default {TrainConfig().flat_dict()[key]})")
    x.set_defaults(func=cmd_export_synthetic)

    c = sub.add_parser("check-data", help="check a GCNet-layout data folder before a long run",
                       description="Check a data folder file by file: missing or extra files (named), feature dims "
                                   "per modality, NaN / inf, empty conversations, labels, IEMOCAP's sessions, class "
                                   "balance per split; prints a summary and exits 1 on a problem.")
    c.add_argument("--dataset", choices=tuple(GCNET_DATASETS), required=True)
    c.add_argument("--data-root", required=True, help="the folder holding the label pickle and the features")
    c.add_argument("--label-file", help="the label pickle (default: found under --data-root)")
    for m in ("text", "audio", "visual"):
        c.add_argument(f"--{m}-root", help=f"the {m} feature folder (default: found under --data-root)")
    c.add_argument("--max-listed", type=int, default=20, help="problems / warnings listed in full (default 20)")
    c.set_defaults(func=cmd_check_data)

    b = sub.add_parser("bench", help="kernel benchmarks (runs bench/run.py with the remaining arguments)",
                       description="Run the benchmark suite <repo>/bench/run.py (it ships with the source checkout); "
                                   "all further arguments go to it: `iteach-fast bench -- --help` shows its options.")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench/run.py")
    b.set_defaults(func=cmd_bench)

    n = sub.add_parser("info", help="versions, device and available kernel backends")
    n.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"] and argv[1:] not in (["-h"], ["--help"]):
        # everything after `bench` belongs to bench/run.py (argparse's REMAINDER cannot take
        # a leading option such as --quick); `iteach-fast bench -- --help` shows the suite's help
        return cmd_bench(argparse.Namespace(command="bench", bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, RunDirBusy, DistributedError) as err:
        # user errors (bad config, missing files, fp16 on CPU), a busy --out-dir, a diverged
        # run, a failed peer under torchrun: one clear line (naming the rank), no traceback
        print(f"iteach-fast {args.command}{rank_tag()}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
