"""A newcomer's first hour (issue 23): the package installs whole (every runtime import declared),
imports light, says when its extension must be rebuilt, picks CPU threads that fit the machine,
exports data that GCNet's own reader accepts, and its command line reads well (plurals, no
progress bars in log files, what ``auto`` picks)."""
import argparse
import ast
import contextlib
import glob
import io
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

from iteach_fast import cli
from iteach_fast.data.check import check_data, export_synthetic
from iteach_fast.data.gcnet import GCNET_DATASETS, load_gcnet
from iteach_fast.data.sources import splits_for, synthetic_spec
from iteach_fast.ops import cpp
from iteach_fast.training import runtime
from iteach_fast.training.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: the distribution that provides each third-party module the package imports
DISTRIBUTIONS = {"torch": "torch", "numpy": "numpy", "sklearn": "scikit-learn", "tqdm": "tqdm",
                 "matplotlib": "matplotlib", "yaml": "PyYAML", "triton": "triton"}


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


# ----------------------------------------------------------------------------- installs whole

def _setup_keywords() -> dict:
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: k.value for k in call.keywords}


def _requirement_names(items) -> set:
    names = set()
    for item in items:
        name = item
        for sep in "<>=![; ":
            name = name.split(sep)[0]
        names.add(name.lower())
    return names


def test_setup_declares_every_third_party_import_of_the_package():
    keywords = _setup_keywords()
    required = _requirement_names(ast.literal_eval(keywords["install_requires"]))
    extras = set().union(*map(_requirement_names, ast.literal_eval(keywords["extras_require"]).values()))
    imported = set()
    for folder in ("iteach_fast", "kernels"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            for node in ast.walk(ast.parse(open(path).read(), path)):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("iteach_fast", "__future__")}
    unknown = third_party - set(DISTRIBUTIONS)
    assert not unknown, f"the package imports {sorted(unknown)}: add them to install_requires (and here)"
    missing = {DISTRIBUTIONS[m] for m in third_party if DISTRIBUTIONS[m].lower() not in required | extras}
    assert not missing, f"imported by the package but not declared in setup.py: {sorted(missing)}"
    assert "triton" in extras  # the GPU kernels: an extra (the package imports without it)
    assert "pyyaml" in required  # train --config run.yaml after pip install .
    assert "long_description" in keywords  # the README travels with the wheel


def test_an_extension_built_for_another_torch_is_not_loaded(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "iteach_fast._build_info", types.SimpleNamespace(TORCH_VERSION="1.0.0"))
    module, reason = cpp.load()
    assert module is None and "built for torch 1.0.0" in reason and torch.__version__ in reason
    assert "rebuild" in reason and "make build" in reason
    monkeypatch.setitem(sys.modules, "iteach_fast._build_info", types.SimpleNamespace(TORCH_VERSION=torch.__version__))
    assert cpp.load()[1] in (None, cpp.STATUS[1])  # the same torch: loads as it did (or fails as it did)


def test_the_package_root_loads_nothing_until_asked():
    out = _run("import sys, iteach_fast\n"
               "print('torch' in sys.modules, iteach_fast.__version__)\n"
               "from iteach_fast.training.checkpoint import load_model\n"
               "print(iteach_fast.load_model is load_model, iteach_fast.ops.ecce_bias.__module__)")
    first, second = out.splitlines()[-2:]
    assert first.startswith("False ")
    assert second == "True iteach_fast.ops"


def test_choices_and_runtime_import_without_torch():
    assert _run("import sys, iteach_fast.choices, iteach_fast.training.runtime\n"
                "print('torch' in sys.modules)") == "False"


def test_the_help_path_imports_no_torch():
    """`iteach-fast --help` in well under a second: the command line, the configs and the choices
    import no torch (iteach_fast.nn loads its modules on first use, check_fold lives in checks)."""
    assert _run("import sys\nfrom iteach_fast import cli\nprint('torch' in sys.modules)") == "False"
    assert _run("import sys\nfrom iteach_fast import cli\ncli.build_parser(['train'])\n"
                "print('torch' in sys.modules)") == "False"


# ----------------------------------------------------------------------------- threads

def _cgroup(tmp_path, proc: str, files: dict) -> tuple[str, str]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / ".keep").parent.mkdir(parents=True, exist_ok=True)
    proc_file = tmp_path / "proc_cgroup"
    proc_file.write_text(proc)
    return str(root), str(proc_file)


def test_cpu_quota_reads_cgroup_v2_the_tightest_of_the_path(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/user.slice/job\n", {
        "cpu.max": "max 100000\n", "user.slice/cpu.max": "300000 100000\n", "user.slice/job/cpu.max": "max 100000\n"})
    assert runtime.cpu_quota(root, proc) == 3.0
    root, proc = _cgroup(tmp_path / "b", "0::/\n", {"cpu.max": "150000 100000\n"})  # a container's own root
    assert runtime.cpu_quota(root, proc) == 1.5
    root, proc = _cgroup(tmp_path / "c", "0::/\n", {"cpu.max": "max 100000\n"})
    assert runtime.cpu_quota(root, proc) is None


def test_cpu_quota_reads_cgroup_v1(tmp_path):
    root, proc = _cgroup(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert runtime.cpu_quota(root, proc) == 2.0
    root, proc = _cgroup(tmp_path / "b", "3:cpu,cpuacct:/\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert runtime.cpu_quota(root, proc) is None
    assert runtime.cpu_quota(str(tmp_path / "none"), str(tmp_path / "no-such-file")) is None


def test_usable_cores_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(runtime, "cpu_quota", lambda: 2.5)
    assert runtime.usable_cores() == 2
    monkeypatch.setattr(runtime, "cpu_quota", lambda: 0.5)
    assert runtime.usable_cores() == 1
    monkeypatch.setattr(runtime, "cpu_quota", lambda: None)
    assert runtime.usable_cores() == 6


def test_resolve_threads_shares_the_cores_and_names_a_busy_machine(monkeypatch):
    r = runtime.resolve_threads
    assert r(0, processes=1, load=0.2, cores=8, machine=8) == (8, None)
    assert r(0, processes=4, load=0.2, cores=8, machine=8) == (2, None)  # reproduce --jobs 4 / 4 ranks
    assert r(0, processes=16, load=0.2, cores=8, machine=8)[0] == 1
    assert r("all", processes=4, load=7.0, cores=8, machine=8) == (8, None)
    assert r(3, processes=1, load=0.0, cores=8, machine=8) == (3, None)
    count, note = r(0, processes=2, load=30.0, cores=8, machine=8)  # busy: the cores all the same, and a note
    assert count == 4 and "4 CPU threads in each of 2 processes" in note and "leaves 0 free" in note
    count, note = r(4, processes=1, load=30.0, cores=8, machine=8)
    assert count == 4 and "--threads 4" in note and "load (30.0 on 8 CPUs)" in note
    count, note = r(6, processes=2, load=0.0, cores=8, machine=8)
    assert count == 6 and "6 threads x 2 processes on 8 usable cores" in note
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's processes on this node
    assert r(0, load=0.0, cores=8, machine=8) == (4, None)


def test_threads_all_on_the_command_line_and_in_a_config_file(tmp_path):
    args = cli.build_parser(["train"]).parse_args(["train", "--threads", "all"])
    assert cli.config_from_args(args).threads == runtime.THREADS_ALL
    path = tmp_path / "run.yaml"
    path.write_text("threads: all\n")
    args = cli.build_parser(["train"]).parse_args(["train", "--config", str(path)])
    assert cli.config_from_args(args).threads == runtime.THREADS_ALL
    with pytest.raises(ValueError, match="threads must be an int >= 0 .* or 'all'"):
        TrainConfig().replace(threads="many")
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            cli.build_parser(["train"]).parse_args(["train", "--threads", "-3"])


def test_set_threads_gives_torch_the_resolved_count(monkeypatch):
    import torch

    before = torch.get_num_threads()
    lines = []
    try:
        monkeypatch.setattr(runtime, "usable_cores", lambda: 1)
        assert runtime.set_threads(0, log=lines.append) == 1 and torch.get_num_threads() == 1
        assert runtime.set_threads(2, log=lines.append) == 2 and torch.get_num_threads() == 2
        assert any("--threads 2" in line for line in lines)  # 2 threads on 1 usable core: named
    finally:
        torch.set_num_threads(before)


def test_the_command_line_asks_openmp_to_sleep_before_torch_loads():
    out = _run("import os, sys\nos.environ.pop('OMP_WAIT_POLICY', None)\nos.environ.pop('GOMP_SPINCOUNT', None)\n"
               "from iteach_fast import cli\nprint(os.environ.get('OMP_WAIT_POLICY'), cli.PASSIVE_OPENMP)")
    assert out.splitlines()[-1] == "PASSIVE True"
    out = _run("import os\nos.environ['OMP_WAIT_POLICY'] = 'ACTIVE'\n"
               "from iteach_fast import cli\nprint(os.environ.get('OMP_WAIT_POLICY'), cli.PASSIVE_OPENMP)")
    assert out.splitlines()[-1] == "ACTIVE False"  # the user's own setting is kept


# ----------------------------------------------------------------------------- GCNet's layout

SYN = dict(syn_conversations=10, syn_min_len=3, syn_max_len=8, syn_dims=(6, 4, 5), seed=3)


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gcnet") / "iemocap")
    return root, export_synthetic(root, "iemocap4", synthetic_spec(TrainConfig.from_dict(SYN)))


def test_export_iemocap_is_what_gcnets_reader_expects(iemocap):
    """GCNet's ``read_data``: ``trainVid | testVid`` (sets), one ``<uid>*`` entry per utterance
    and modality, a face folder's files named with their speaker's letter (F or M)."""
    root, info = iemocap
    with open(info["label_file"], "rb") as f:
        ids, labels, speakers, sentences, train_vid, test_vid = pickle.load(f, encoding="latin1")
    assert isinstance(train_vid, set) and isinstance(test_vid, set)
    vids = sorted(train_vid | test_vid)
    assert vids == sorted(ids)
    for modality, folder in info["feature_roots"].items():
        for vid in vids:
            for uid, speaker in zip(ids[vid], speakers[vid]):
                (entry,) = glob.glob(os.path.join(folder, uid + "*"))
                if modality != "visual":
                    assert entry.endswith(".npy")
                    continue
                assert os.path.isdir(entry)  # faces, as IEMOCAP's releases hold them
                faces = sorted(os.listdir(entry))
                assert all(("F" in face) != ("M" in face) for face in faces)
                mine = [np.load(os.path.join(entry, face)) for face in faces if speaker in face]
                theirs = [np.load(os.path.join(entry, face)) for face in faces if speaker not in face]
                assert len(mine) == 2 and len(theirs) == 1
                np.testing.assert_array_equal(np.mean(mine, axis=0), mine[0])
                assert not np.array_equal(theirs[0], mine[0])


def test_export_iemocap_loads_back_through_the_package_and_passes_check_data(iemocap):
    root, _ = iemocap
    assert check_data("iemocap4", root).ok
    original = splits_for(TrainConfig.from_dict({**SYN, "syn_classes": 4}))
    by_text = {c["text"].tobytes(): c for part in (original.train, original.valid, original.test) for c in part}
    loaded = load_gcnet("iemocap4", root, fold=5)
    for conv in list(loaded.train) + list(loaded.valid) + list(loaded.test):
        np.testing.assert_array_equal(conv["visual"], by_text[conv["text"].tobytes()]["visual"])  # the speaker's faces


def test_the_command_line_knows_the_file_datasets():
    assert set(cli.FILE_DATASETS) == set(GCNET_DATASETS)


# ----------------------------------------------------------------------------- the command line reads well

def test_info_says_what_auto_picks_and_the_threads(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for op in ("ecce_bias", "ecce_attention", "routed_mixture"):
        assert any(line.split()[:3] == [op, "auto", "picks"] for line in out.splitlines()), op
    line = next(line for line in out.splitlines() if line.startswith("CPU"))
    count = int(line.split("--threads 0 gives ")[1].split()[0])
    assert f"gives {count} thread{'' if count == 1 else 's'}" in line  # "1 thread", "2 threads"


def test_no_progress_bars_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file
    args = cli.build_parser(["train"]).parse_args(["train"])
    assert cli.config_from_args(args).progress is False
    args = cli.build_parser(["train"]).parse_args(["train", "--progress"])
    assert cli.config_from_args(args).progress is True  # asked for: kept


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip().endswith(cli.__version__)


def test_threads_flag_of_evaluate_and_predict():
    for command in ("evaluate", "predict"):
        parser = cli.build_parser([command])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        (action,) = [a for a in sub._actions if a.dest == "threads"]
        assert action.default == runtime.THREADS_AUTO and action.type("all") == runtime.THREADS_ALL
