"""``iteach-fast`` (also ``python -m iteach_fast``): train, evaluate, ime, demo, predict,
reproduce, export-synthetic, check-data, bench, info.

Every field of :class:`iteach_fast.training.config.TrainConfig` is a flag (``--batch-size 16``,
``--syn-dims 64,32,48``); ``--config FILE`` (YAML/JSON) sets defaults that flags override.

The parser is built from one table, :data:`COMMANDS`. ``--help`` stays fast: whatever needs
torch (the operators, the model, data, checkpoints), and the training loop, evaluation
(scikit-learn, matplotlib) and reproduce, are imported when a command runs (:data:`LAZY`), and
only the command being run (or asked for help) gets its options.

Before anything imports torch, OpenMP is asked to let waiting threads sleep
(:func:`~iteach_fast.training.runtime.passive_openmp`), and every command that computes gets
its CPU threads from :func:`~iteach_fast.training.runtime.set_threads` (``--threads``).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import typing
from collections.abc import Callable

from .training import runtime

#: whether this process set OpenMP's wait policy (its children but the benchmarks inherit it)
PASSIVE_OPENMP = runtime.passive_openmp()  # before torch loads OpenMP (anything below may import torch)

from . import __version__  # noqa: E402
from .choices import BACKENDS, DATASETS, EVAL_MODELS, EVAL_RATES, EXPERIMENTS, FORMATS, LAYOUTS, PRECISIONS  # noqa: E402
from .files import atomic_write, check_output  # noqa: E402
from .nn.config import ModelConfig, coerce  # noqa: E402
from .presets import DEFAULT_SEEDS, DEMO_DEFAULTS, QUICK, QUICK_SEEDS  # noqa: E402
from .training.config import MODEL_KEYS, TRAIN_KEYS, TrainConfig, load_mapping  # noqa: E402
from .training.runtime import resolve_device, set_threads  # noqa: E402

#: the datasets read from files in GCNet's layout (every dataset but the embedded synthetic one)
FILE_DATASETS = tuple(d for d in DATASETS if d != "synthetic")

#: what the commands call from the heavy modules, imported when a command runs (:func:`_lazy`)
LAZY = {
    "check_data": "iteach_fast.data.check:check_data",
    "export_synthetic": "iteach_fast.data.check:export_synthetic",
    "synthetic_spec": "iteach_fast.data.sources:synthetic_spec",
    "available_backends": "iteach_fast.ops.backends:available_backends",
    "select": "iteach_fast.ops.backends:select",
    "RunDirBusy": "iteach_fast.training.checkpoint:RunDirBusy",
    "load_checkpoint": "iteach_fast.training.checkpoint:load_checkpoint",
    "load_for_eval": "iteach_fast.training.checkpoint:load_for_eval",
    "DistributedError": "iteach_fast.training.distributed:DistributedError",
    "rank_tag": "iteach_fast.training.distributed:rank_tag",
    "train": "iteach_fast.training.loop:train",
    "RESUME_SETTINGS": "iteach_fast.training.loop:RESUME_SETTINGS",
    "ume": "iteach_fast.evaluation.protocols:ume",
    "ime": "iteach_fast.evaluation.protocols:ime",
    "demo": "iteach_fast.evaluation.protocols:demo",
    "stream_demo": "iteach_fast.evaluation.protocols:stream_demo",
    "data_gaps": "iteach_fast.evaluation.gaps:data_gaps",
    "BaselineConfig": "iteach_fast.evaluation.baselines:BaselineConfig",
    "predict_file": "iteach_fast.evaluation.predict:predict_file",
    "reproduce": "iteach_fast.reproduce:reproduce",
    "VARIED": "iteach_fast.reproduce.plan:VARIED",
}

#: the synthetic set's fields that export-synthetic takes, named as for train
EXPORT_KEYS = ("syn_conversations", "syn_min_len", "syn_max_len", "syn_dims", "seed")
#: the splits a checkpoint is evaluated on
SPLITS = ("test", "valid")

#: one line per config field: the flags' help (their choices and defaults are added from the field)
CONFIG_HELP = {
    # data
    "dataset": "the data: the embedded synthetic conversations, or a paper dataset in GCNet's files (--data-root)",
    "data_root": "the folder of a GCNet-layout dataset: label pickle and feature folders (docs/data.md)",
    "label_file": "the label pickle (default: found under --data-root)",
    "text_root": "the text feature folder (default: found under --data-root)",
    "audio_root": "the audio feature folder (default: found under --data-root)",
    "visual_root": "the visual feature folder (default: found under --data-root)",
    "fold": "IEMOCAP: the session held out for testing (leave-one-session-out, 1..5)",
    "select_on": "the split model selection reads: valid (carved from the training data) or test (the paper's)",
    "syn_conversations": "synthetic data: the number of conversations",
    "syn_min_len": "synthetic data: the fewest utterances in a conversation",
    "syn_max_len": "synthetic data: the most utterances in a conversation",
    "syn_classes": "synthetic data: 4 or 6 emotion classes, or 1 (a regression score in [-3, 3], as CMU-MOSI)",
    "syn_dims": "synthetic data: the feature dims of text, audio, visual",
    # optimisation
    "epochs": "training epochs",
    "batch_size": "conversations per optimiser step (the global batch under torchrun)",
    "lr": "AdamW's learning rate of the weights",
    "router_lr": "AdamW's learning rate of the NAS router",
    "weight_decay": "AdamW's weight decay",
    "grad_clip": "clip the gradient norm to this (0: no clipping)",
    "rec_weight": "not the paper's (eq. 15 weighs it 1): the weight of L_rec, the student's distance to the teacher's "
                  "features on utterances that lost a modality, in the total loss",
    "ema": "not the paper's: validate, save and evaluate an exponential moving average of the weights, with this "
           "decay per optimiser step (0: off; 0.99 averages over about the last 100 steps)",
    "strategy": "the training missing rate: fixed (--rate), random (each batch uniform in [0, --max-rate]) or "
                "progressive (+ --progressive-step every --progressive-every epochs)",
    "rate": "the fixed strategy's missing rate: the fraction of (utterance, modality) cells dropped",
    "max_rate": "random: the largest rate drawn; progressive: the cap",
    "rate_power": "not the paper's: random draws each batch's rate as max_rate * U ** (1 / rate_power), U uniform "
                  "in [0, 1) (1: uniform, the paper's; 2: the density rises linearly to max_rate); the baselines "
                  "train with the same draw",
    "outage_prob": "not the paper's: the probability that a training conversation loses one or two modalities for "
                   "its whole length (a robustness option; evaluate --gaps measures outages)",
    "progressive_step": "progressive: the rate added at each step",
    "progressive_every": "progressive: epochs per step",
    "select_rates": "model selection: the student's validation WAF averaged over these rates (fixed: its own)",
    "eval_seed": "the seed of the fixed evaluation masks",
    # run
    "seed": "the seed of the weights, the batch order and the training masks",
    "device": "auto (cuda if there is one), cpu, cuda or cuda:K",
    "dtype": "precision: fp32, or bf16 / fp16 autocast (GPU only)",
    "threads": "CPU threads: 0 fits the machine (the cores this process may use, its CPU quota, shared with the "
               "processes beside it), all every core this process may use, N exactly N",
    "out_dir": "the run's folder: best.pt, last.pt",
    "progress": "progress bars on stderr",
    "compile": "torch.compile the forward + loss: the same results, faster steps once compiled",
    "cuda_graphs": "CUDA only: capture the whole training step in a CUDA graph",
    # the model
    "framework": "its: teacher TF + student NAS (Inverted Teacher-Student); ts: teacher NAS + student TF; "
                 "pre: one TF model",
    "teacher_mixer": "the teacher's token mixer: tf (attention) or nas (routed mixture of four) "
                     "(default: the framework's)",
    "student_mixer": "the student's token mixer: tf or nas (default: the framework's)",
    "teacher_layers": "the teacher's encoder layers (default: the framework's: its 3, ts 4)",
    "student_layers": "the student's encoder layers (default: the framework's: its 4, ts 3, pre 3 with tf / 4 "
                      "with nas)",
    "dim": "the model dim D",
    "heads": "attention heads (must divide --dim)",
    "ffn_ratio": "the encoder FFN's hidden width, in units of --dim",
    "mlp_ratio": "the NAS MLP token mixer's hidden width, in units of --max-len",
    "max_len": "the longest conversation the model takes (the NAS MLP token mixer's width)",
    "dist": "ECCE's band: utterance pairs with |i - j| < dist get a context bias",
    "conv_kernel": "ECCE's local convolution width (odd)",
    "pool_size": "the NAS pooling mixers' window (odd)",
    "ecce": "ECCE's parts: local+global (the paper's), global only, or off",
    "dropout": "the dropout rate",
    "backend": "the fused operators' backend: auto picks the fastest available here (iteach-fast info)",
    "causal": "real-time ERC: each output sees the utterances up to its own only (streamable)",
    "cross_ecce": "not the paper's: the text stream's ECCE bias guides its cross-attentions too",
    "early_fusion": "not the paper's: which streams' input projections read text, audio and visual together: off (the "
                    "paper's), text (the text stream's), all (every stream's)",
    "recurrent": "not the paper's: a residual GRU over each stream's utterances before ECCE (bidirectional; "
                 "forward only with --causal), so the model knows their order",
    "presence": "not the paper's: every input projection also reads the utterance's three presence flags (the "
                "baselines read them too), so a missing modality is not only a zero",
}


def _lazy(name: str):
    """The object :data:`LAZY` names, imported now."""
    module, _, attr = LAZY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, with an option's default after its help where there is one to show (not
    None / False, and not already in the help)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "(default" in text or default is None or default is False or default == argparse.SUPPRESS \
                or not action.option_strings:
            return text
        return f"{text} (default: {_shown(default).replace('%', '%%')})"  # argparse %-formats help


def _list_of(kind):
    def parse(text: str):
        try:
            values = tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}: {text!r}") from err
        if not values:  # "," is not "the default"
            raise argparse.ArgumentTypeError(f"expected one or more {kind.__name__} values, comma-separated: {text!r}")
        return values
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


def _threads_type(text: str) -> int:
    """``--threads``: an int >= 0 or ``all``."""
    try:
        return runtime.parse_threads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_threads_type.__name__ = "--threads"  # argparse names the type in its messages


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads_type, default=runtime.THREADS_AUTO, metavar="N|all",
                   help=CONFIG_HELP["threads"])


def _add_config_flags(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """One flag per config field (model fields flattened in); default SUPPRESS so only given
    flags override --config. Types and choices come from the fields' annotations."""
    base = TrainConfig().replace(**(defaults or {})).flat_dict()
    hints = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(ModelConfig)}
    g = p.add_argument_group("training configuration (TrainConfig and its ModelConfig; defaults shown)")
    for name in TRAIN_KEYS + MODEL_KEYS:
        default, hint = base[name], hints[name]
        flag = "--" + name.replace("_", "-")
        text = CONFIG_HELP.get(name, "")
        shown = "" if default is None else f" (default: {_shown(default)})"
        kw = dict(default=argparse.SUPPRESS, dest=name, help=f"{text}{shown}".strip())
        if hint is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        literal = [a for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is typing.Literal]  # or Optional
        if literal:
            kw["choices"] = typing.get_args(literal[0])
        kw["type"] = _threads_type if name == "threads" else _flag_type(flag, hint)
        if name == "threads":
            kw["metavar"] = "N|all"
        if typing.get_origin(hint) is tuple:
            kw["metavar"] = "A,B,.."
        g.add_argument(flag, **kw)
    p.add_argument("--config", help="YAML or JSON file of config keys, flat or with a model: section "
                                    "(flags override it)")


def config_from_args(args: argparse.Namespace, defaults: dict | None = None) -> TrainConfig:
    cfg = TrainConfig().replace(**(defaults or {}))
    if getattr(args, "config", None):
        cfg = cfg.merge(load_mapping(args.config), source=args.config)
    given = {k: getattr(args, k) for k in TRAIN_KEYS + MODEL_KEYS if hasattr(args, k)}
    if "progress" not in given and not _terminal(sys.stderr):
        given["progress"] = False  # a bar's carriage returns would fill a log file: --progress forces it
    return cfg.replace(**given).validate()


def _terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def _rates_option(p: argparse.ArgumentParser, **kw) -> None:
    p.add_argument("--rates", type=_list_of(float), nargs="+", metavar="R,R,..",
                   **{"default": EVAL_RATES, "help": "missing rates, comma- or space-separated", **kw})


def _demo_defaults_text(defaults: dict) -> str:
    return ", ".join(f"{k}={_shown(v)}" for k, v in defaults.items())


# ------------------------------------------------------------------ train

def train_options(p: argparse.ArgumentParser) -> None:
    _add_config_flags(p)
    p.add_argument("--resume", help="a last.pt to continue from (bit-identical continuation)")


def cmd_train(args) -> int:
    if args.resume:
        # the checkpoint's own config; flags may raise --epochs or move --out-dir (default:
        # the checkpoint's folder), everything else stays as trained
        ckpt_cfg = TrainConfig.from_dict(_lazy("load_checkpoint")(args.resume)["config"], source=args.resume)
        defaults = {**ckpt_cfg.flat_dict(), "out_dir": os.path.dirname(os.path.abspath(args.resume))}
        cfg = config_from_args(args, defaults)
        ignored = sorted(k for k, v in cfg.flat_dict().items()
                         if k not in _lazy("RESUME_SETTINGS") and v != defaults.get(k))
        if ignored:
            print(f"note: --resume continues the checkpoint's run; these settings are ignored: {ignored}",
                  file=sys.stderr)
    else:
        cfg = config_from_args(args)
    summary = _lazy("train")(cfg, resume=args.resume)
    if summary["rank"] == 0 and summary["best"]:
        print(f"best checkpoint: {summary['best']}\n"
              f"evaluate it with: iteach-fast evaluate --checkpoint {summary['best']}")
    return 0


# ------------------------------------------------------------------ evaluate

def evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint_pos", nargs="?", metavar="CHECKPOINT", help="the same as --checkpoint")
    p.add_argument("--checkpoint", help="best.pt or last.pt from `train` (required, or as CHECKPOINT)")
    p.add_argument("--out", help="output folder (default: the checkpoint's folder)")
    _rates_option(p, default=None, help="missing rates, comma- or space-separated (default: 0.0,0.1,...,0.7; "
                                        "the teacher: 0.0 only)")
    p.add_argument("--model", choices=EVAL_MODELS, default="student",
                   help="student: at each missing rate; teacher: on complete data, as the paper's Table 1 "
                        "(writes teacher.json / teacher.csv)")
    p.add_argument("--split", choices=SPLITS, default="test", help="the split to evaluate on")
    p.add_argument("--seed", type=int, default=0, help="seed of the test masks")
    p.add_argument("--batch-size", type=int, default=None, help="conversations per batch (default: the run's)")
    p.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, cuda or cuda:K")
    p.add_argument("--backend", default=None, choices=BACKENDS, help="the fused operators' backend (default: the "
                                                                     "run's)")
    p.add_argument("--dtype", default=None, choices=PRECISIONS, help="precision (default: the run's)")
    _threads_option(p)
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs (WAF vs rate, confusion, ECCE heatmap)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the baselines (majority, logistic regression with and without context, BiGRU) that "
                        "are otherwise trained on the run's data and strategy and shown beside the student")
    p.add_argument("--gaps", action="store_true",
                   help="also measure, like with like beside the baselines: context on complete data, the test "
                        "utterances grouped by the modalities each kept under the paper's masks, and whole-"
                        "conversation outages (classification); writes gaps.json")


def cmd_evaluate(args) -> int:
    if args.checkpoint and args.checkpoint_pos and args.checkpoint != args.checkpoint_pos:
        raise ValueError("give the checkpoint once: --checkpoint or CHECKPOINT")
    args.checkpoint = args.checkpoint or args.checkpoint_pos
    if not args.checkpoint:
        raise ValueError("the argument --checkpoint (or CHECKPOINT) is required: a best.pt or last.pt from `train`")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 (conversations per batch), got {args.batch_size}")
    check_output(args.out or os.path.dirname(os.path.abspath(args.checkpoint)), "--out", folder=True,
                 inputs=(args.checkpoint,))
    set_threads(args.threads)
    res = _lazy("ume")(args.checkpoint, out_dir=args.out, rates=_flat(args.rates) if args.rates else None,
                       split=args.split, seed=args.seed, batch_size=args.batch_size, device=args.device,
                       backend=args.backend, dtype=args.dtype, plots=not args.no_plots, model=args.model,
                       baselines=not args.no_baselines)
    written = [f"{k} {v}" for k, v in res["paths"].items() if v]
    if args.gaps:
        net, cfg, splits, _ = _lazy("load_for_eval")(args.checkpoint, device=args.device, backend=args.backend)
        print()
        gaps = _lazy("data_gaps")(splits, net, split=args.split, device=resolve_device(args.device),
                                  config=_lazy("BaselineConfig").from_train_config(cfg), mask_seed=args.seed)
        path = os.path.join(args.out or os.path.dirname(os.path.abspath(args.checkpoint)), "gaps.json")
        atomic_write(path, json.dumps({"split": args.split, "rows": gaps["rows"]}, indent=2))
        written.append(f"gaps {path}")
    print("written: " + ", ".join(written))
    return 0


# ------------------------------------------------------------------ ime, demo

def ime_options(p: argparse.ArgumentParser) -> None:
    _add_config_flags(p)
    _rates_option(p, help="the rates to train and test a model at, comma- or space-separated")


def cmd_ime(args) -> int:
    cfg = config_from_args(args)
    check_output(os.path.join(cfg.out_dir, "ime"), "--out-dir", folder=True)
    for rate in _flat(args.rates):  # every rate's run checked before the first one trains
        try:
            cfg.replace(strategy="fixed", rate=rate).validate()
        except ValueError as err:
            raise ValueError(f"--rates {rate}: {err}") from None
    res = _lazy("ime")(cfg, rates=_flat(args.rates), out_dir=os.path.join(cfg.out_dir, "ime"))
    print(f"written under {os.path.join(cfg.out_dir, 'ime')} (ime.json, ime.csv)")
    return 0 if res["rows"] else 1


def demo_options(p: argparse.ArgumentParser) -> None:
    defaults = DEMO_DEFAULTS
    p.description = (f"Train on synthetic conversations with a short schedule, then UME; writes under "
                     f"runs/demo/<framework>/. Demo defaults: {_demo_defaults_text(defaults)}. Any training flag "
                     "overrides them; --framework pre runs the single-model baseline for comparison.")
    _add_config_flags(p, defaults)
    p.add_argument("--stream", action="store_true",
                   help="train a causal model (under runs/demo-stream/) and replay one test conversation "
                        "utterance by utterance, printing each prediction as it arrives")
    p.add_argument("--no-baselines", action="store_true", help="skip the baselines shown beside the model")


def cmd_demo(args) -> int:
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    defaults = DEMO_DEFAULTS
    if args.stream:  # a causal model, then one test conversation replayed live
        _lazy("stream_demo")(config_from_args(args, {**defaults, "causal": True,
                                                     "out_dir": os.path.join("runs", "demo-stream")}), log=log)
        return 0
    _lazy("demo")(config_from_args(args, defaults), log=log, baselines=not args.no_baselines)
    return 0


# ------------------------------------------------------------------ predict

def predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="best.pt or last.pt from `train`")
    p.add_argument("inputs", help=".npz / .pt of per-conversation arrays, or a GCNet-layout folder")
    p.add_argument("--out", help="output file, .csv or .json (default: CSV on stdout)")
    p.add_argument("--format", choices=FORMATS, help="the output format (default: from --out's "
                                                              "extension, csv otherwise)")
    p.add_argument("--stream", action="store_true", help="replay utterance by utterance (causal checkpoints)")
    p.add_argument("--model", choices=EVAL_MODELS, default="student",
                   help="student (the incomplete-data model) or teacher")
    p.add_argument("--dataset", choices=FILE_DATASETS,
                   help="the dataset of a GCNet-layout folder (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, cuda or cuda:K")
    p.add_argument("--backend", default=None, choices=BACKENDS, help="the fused operators' backend (default: the "
                                                                     "run's)")
    p.add_argument("--batch-size", type=int, default=32, help="conversations per batch")
    _threads_option(p)


def cmd_predict(args) -> int:
    set_threads(args.threads)
    res = _lazy("predict_file")(args.checkpoint, args.inputs, out=args.out, fmt=args.format, stream=args.stream,
                                device=args.device, backend=args.backend, batch_size=args.batch_size,
                                dataset=args.dataset, model=args.model)
    if res["path"]:
        meta = res["meta"]
        print(f"{_count(meta['utterances'], 'prediction')} ({_count(meta['conversations'], 'conversation')}"
              f"{', streamed' if args.stream else ''}) written to {res['path']}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ reproduce

def reproduce_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="+", choices=EXPERIMENTS + ("all",), metavar="WHAT",
                   help=f"one or more of {', '.join(EXPERIMENTS)}, or all")
    p.add_argument("--quick", action="store_true",
                   help=f"the demo's recipe, seed 0 ({_demo_defaults_text(QUICK)})"
                        "; flags and --seeds still override")
    p.add_argument("--seeds", type=_list_of(int), default=None, metavar="S,S,..",
                   help=f"seeds of the runs (default {_shown(DEFAULT_SEEDS)}: the paper's three runs; "
                        f"--quick: {_shown(QUICK_SEEDS)})")
    p.add_argument("--folds", type=_list_of(int), default=None, metavar="K,K,..",
                   help="IEMOCAP's held-out sessions (default 1,2,3,4,5); other datasets have one split")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, as processes")
    p.add_argument("--devices", type=_list_of(int), default=None, metavar="I,I,..",
                   help="CUDA devices to spread the runs over (e.g. 0,1)")
    _add_config_flags(p, {"out_dir": os.path.join("runs", "reproduce")})


def cmd_reproduce(args) -> int:
    if getattr(args, "seed", None) is not None or getattr(args, "fold", None) is not None:
        raise ValueError("reproduce runs several seeds and folds: use --seeds and --folds (not --seed / --fold)")
    varied = sorted(k for k in _lazy("VARIED") if hasattr(args, k))
    if varied:
        print(f"note: reproduce sets {', '.join('--' + k.replace('_', '-') for k in varied)} per run (each "
              "table's rows); the values given are ignored", file=sys.stderr)
    defaults = {**(QUICK if args.quick else {}), "out_dir": os.path.join("runs", "reproduce")}
    cfg = config_from_args(args, defaults)
    command = "iteach-fast " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None
    seeds = args.seeds if args.seeds is not None else QUICK_SEEDS if args.quick else DEFAULT_SEEDS
    res = _lazy("reproduce")(args.what, cfg, seeds=seeds, folds=args.folds, jobs=args.jobs, devices=args.devices,
                             command=command, log=lambda *a: print(*a, flush=True))
    return 1 if res["failures"] else 0


# ------------------------------------------------------------------ data

def export_synthetic_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="DIR", help="the folder to write (must be empty, or pass --overwrite)")
    p.add_argument("--layout", choices=LAYOUTS, default="gcnet", help="the file layout")
    p.add_argument("--dataset", choices=FILE_DATASETS, default="iemocap4",
                   help="the dataset whose layout and classes to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig().flat_dict()
    for key in EXPORT_KEYS:
        flag = "--" + key.replace("_", "-")
        p.add_argument(flag, dest=key, default=None, type=_flag_type(flag, hints[key]),
                       help=f"{CONFIG_HELP[key]}, as for train (default: {_shown(defaults[key])})")


def cmd_export_synthetic(args) -> int:
    given = {k: getattr(args, k) for k in EXPORT_KEYS if getattr(args, k) is not None}
    spec = _lazy("synthetic_spec")(TrainConfig().replace(**given).validate())
    res = _lazy("export_synthetic")(args.out, args.dataset, spec, layout=args.layout, overwrite=args.overwrite)
    print(f"wrote {res['dialogues']} dialogues / {res['utterances']} utterances for {args.dataset} in GCNet's layout "
          f"under {args.out}: {res['label_file']}; features in {', '.join(res['feature_roots'].values())}; "
          f"dialogues per {'session' if args.dataset.startswith('iemocap') else 'split'}: "
          + ", ".join(f"{k} {v}" for k, v in res["splits"].items()))
    print(f"train on it: iteach-fast train --dataset {args.dataset} --data-root {args.out}")
    return 0


def check_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=FILE_DATASETS, required=True, help="the dataset the folder holds")
    p.add_argument("--data-root", required=True, help="the folder holding the label pickle and the features")
    p.add_argument("--label-file", help="the label pickle (default: found under --data-root)")
    for m in ("text", "audio", "visual"):
        p.add_argument(f"--{m}-root", help=f"the {m} feature folder (default: found under --data-root)")
    p.add_argument("--max-listed", type=int, default=20, help="problems / warnings listed in full")


def cmd_check_data(args) -> int:
    if args.max_listed < 0:
        raise ValueError(f"--max-listed must be >= 0, got {args.max_listed}")
    roots = {m: getattr(args, f"{m}_root") for m in ("text", "audio", "visual") if getattr(args, f"{m}_root")}
    report = _lazy("check_data")(args.dataset, args.data_root, label_file=args.label_file, feature_roots=roots)
    print(report.text(max_listed=args.max_listed))
    return 0 if report.ok else 1


# ------------------------------------------------------------------ bench, info

def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench/run.py")


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
    if PASSIVE_OPENMP:  # the benchmarks measure OpenMP as the user's environment sets it, not as we do
        env.pop("OMP_WAIT_POLICY", None)
    return _child([sys.executable, "-m", "bench.run", *rest], env)


def _child(command: list, env: dict) -> int:
    """Run ``command`` and return its exit code; it ends with this process: SIGTERM is passed on
    to it (Ctrl-C reaches it from the terminal), and it is waited for."""
    proc = subprocess.Popen(command, env=env)
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def no_options(p: argparse.ArgumentParser) -> None:
    pass


def cmd_info(args) -> int:
    try:
        import triton

        triton_version = triton.__version__
    except Exception as err:  # noqa: BLE001 - any import failure means "not usable"
        triton_version = f"not available ({type(err).__name__})"
    import numpy
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    threads, note = runtime.resolve_threads(runtime.THREADS_AUTO)
    quota = runtime.cpu_quota()
    load = runtime.load_average()
    print(f"iteach_fast {__version__}")
    print(f"python      {platform.python_version()} ({sys.executable})")
    print(f"torch       {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    print(f"triton      {triton_version}")
    print(f"numpy       {numpy.__version__}")
    print(f"CUDA        {'available' if cuda else 'not available'}")
    print(f"device      {torch.cuda.get_device_name(0) if cuda else 'cpu'}")
    print(f"CPU         {runtime.usable_cores()} usable of {os.cpu_count()} (CPU quota "
          f"{'none' if quota is None else f'{quota:g} CPUs'}; 1-minute load "
          f"{'unknown' if load is None else f'{load:.1f}'}): --threads 0 gives {_count(threads, 'thread')} now"
          + (f" ({note.split(': ', 1)[1]})" if note else ""))
    dtypes = (torch.float32, torch.bfloat16) if cuda else (torch.float32,)
    print(f"backends on {device} (auto picks, for {' / '.join(str(d).replace('torch.', '') for d in dtypes)}):")
    for op, backends in _lazy("available_backends")(device).items():
        for name, why in backends.items():
            print(f"  {op:16s} {name:10s} {'ok' if why is None else 'unavailable: ' + why}")
        picks = []
        for dtype in dtypes:
            try:
                picks.append(_lazy("select")(op, "auto", device, dtype).backend)
            except (ValueError, TypeError) as err:
                picks.append(f"none ({err})")
        print(f"  {op:16s} {'auto':10s} picks {' / '.join(picks)}")
    return 0


def _rank_tag() -> str:
    return _lazy("rank_tag")()


def _count(n: int, noun: str) -> str:
    """``1 thread``, ``2 threads``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


# ------------------------------------------------------------------ the table of commands

@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its ``name``, one line of ``help`` (``iteach-fast --help``), the
    ``description`` of its own help (default: ``help``), ``options(parser)`` adding its
    arguments, and ``run(args)`` returning the exit code."""
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    options: Callable[[argparse.ArgumentParser], None]
    description: str = ""


COMMANDS = (
    Command("train", "train ITEACH-Net (teacher on complete, student on masked data)", cmd_train, train_options,
            "Train ITEACH-Net; writes best.pt / last.pt under --out-dir."),
    Command("evaluate", "UME: test one checkpoint at missing rates 0.0..0.7", cmd_evaluate, evaluate_options,
            "Unified Model Evaluation: one checkpoint, fixed-seed masks per rate; prints the table, writes ume.json, "
            "ume.csv and plots/."),
    Command("ime", "IME: train one model per missing rate (fixed strategy), test each at it", cmd_ime, ime_options,
            "Independent Model Evaluation; writes <out-dir>/ime/ime.json and ime.csv."),
    Command("demo", "short ITS training on synthetic data, then UME (a few CPU minutes)", cmd_demo, demo_options),
    Command("predict", "a trained checkpoint on new data: one prediction per utterance (CSV/JSON)", cmd_predict,
            predict_options,
            "Predict every utterance of new conversations with a checkpoint's student: INPUTS is a .npz (keys "
            "<conversation>/text, /audio, /visual, optional /present (L, 3) bool), a .pt ({conversation: {text, "
            "audio, visual, present}}) or a GCNet-layout folder. Rows: conversation, utterance, prediction and class "
            "probabilities (or score). --stream replays each conversation utterance by utterance through a causal "
            "model: what was known when each utterance arrived."),
    Command("reproduce", "the paper's tables and figures: every run, aggregated over folds x seeds", cmd_reproduce,
            reproduce_options,
            "Train every run that the paper's Tables 1-5 and Figures 6, 7/8, 9 need (IEMOCAP: each fold; each seed), "
            "evaluate them, and write results.csv, one Markdown table per table (mean ± std over folds x seeds, the "
            "paper's number and the difference beside ours on the paper's datasets), PNGs and report.md under "
            "--out-dir (default runs/reproduce). Finished runs are cached under a hash of their config: re-running "
            "resumes. Training flags set the base config; each table sets framework, mixers, ecce, strategy and "
            "rate per row."),
    Command("export-synthetic", "write the synthetic conversations in GCNet's file layout", cmd_export_synthetic,
            export_synthetic_options,
            "Write the synthetic conversations as GCNet's label pickle and per-modality <utterance-id>.npy folders "
            "(IEMOCAP: five sessions Ses01..Ses05, the visual features as per-utterance folders of faces named after "
            "their speaker, as the real releases; CMU-MOSI / MOSEI: train / valid / test ids), so that "
            "`train --dataset D --data-root DIR` (and GCNet's own readers) run on them."),
    Command("check-data", "check a GCNet-layout data folder before a long run", cmd_check_data, check_data_options,
            "Check a data folder file by file: missing or extra files (named), feature dims per modality, NaN / inf, "
            "empty conversations, labels, IEMOCAP's sessions, class balance per split; prints a summary and exits 1 "
            "on a problem."),
    Command("bench", "kernel benchmarks (runs bench/run.py with the remaining arguments)", cmd_bench, bench_options,
            "Run the benchmark suite <repo>/bench/run.py (it ships with the source checkout); all further arguments "
            "go to it: `iteach-fast bench -- --help` shows its options."),
    Command("info", "versions, device and available kernel backends", cmd_info, no_options),
)


class Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line naming the argument (the usage of a
    command with every config flag would bury it), pointing to --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(only=None) -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`. ``only``: the names of the commands
    whose options are added (None: all); ``iteach-fast --help`` needs none of them."""
    p = Parser(prog="iteach-fast", formatter_class=HelpFormatter,
               description="ITEACH-Net: incomplete multimodal ERC (Inverted Teacher-Student training, UME / IME "
                           "evaluation) and its kernels.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        s = sub.add_parser(c.name, help=c.help, description=c.description or c.help, formatter_class=HelpFormatter)
        if only is None or c.name in only:
            c.options(s)
        s.set_defaults(func=c.run)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"] and argv[1:] not in (["-h"], ["--help"]):
        # everything after `bench` belongs to bench/run.py (argparse's REMAINDER cannot take
        # a leading option such as --quick); `iteach-fast bench -- --help` shows the suite's help
        return cmd_bench(argparse.Namespace(command="bench", bench_args=argv[1:]))
    args = build_parser(only=argv[:1]).parse_args(argv)  # the command is the first argument
    try:
        return args.func(args) or 0
    except (ValueError, OSError, _lazy("RunDirBusy"), _lazy("DistributedError")) as err:
        # user errors (bad config, missing or unwritable files, a full disk, fp16 on CPU), a busy
        # --out-dir, a diverged run, a failed peer under torchrun: one clear line (naming the
        # rank), no traceback
        print(f"iteach-fast {args.command}{_rank_tag()}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: one line, saying how to continue where there is a way
        print(f"\niteach-fast {args.command}{_rank_tag()}: interrupted{': ' + str(err) if str(err) else ''}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
