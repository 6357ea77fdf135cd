"""Make some installed modules look absent, to run the GPU check as a machine without them would.

    PYTHONPATH=bench/hide_modules ITEACH_FAST_HIDE_MODULES=sklearn,tqdm python -m pytest ...

Python imports ``sitecustomize`` at start-up from the first folder of ``sys.path`` that has one,
so every Python started with this folder on ``PYTHONPATH`` (the subprocesses of the one started
too) finds each module named in ``ITEACH_FAST_HIDE_MODULES`` (comma-separated top-level names)
missing: ``import sklearn`` raises ``ModuleNotFoundError`` as if it were not installed. A
``sitecustomize`` further down ``sys.path`` (the interpreter's own) still runs after this one.
``bench/gpu_check.sh --hide sklearn,tqdm`` sets both variables.
"""
import os
import sys

HIDDEN = frozenset(name.strip() for name in os.environ.get("ITEACH_FAST_HIDE_MODULES", "").split(",") if name.strip())


def _hidden(fullname: str) -> bool:
    return fullname.split(".")[0] in HIDDEN


class _Without:
    """A finder of ``sys.meta_path`` that finds nothing hidden: with every finder wrapped,
    ``import sklearn`` raises ``ModuleNotFoundError`` and ``importlib.util.find_spec("sklearn")``
    returns None, as where it is not installed."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, fullname, path=None, target=None):
        if _hidden(fullname):
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(fullname, path, target) if find is not None else None

    def __getattr__(self, name):
        return getattr(self.finder, name)


if HIDDEN:
    sys.meta_path[:] = [_Without(finder) for finder in sys.meta_path]
    for name in list(sys.modules):  # nothing imported them yet, but be sure
        if _hidden(name):
            del sys.modules[name]


def _chain() -> None:
    """Run the next ``sitecustomize`` on ``sys.path`` (the one this file shadows), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in sys.path:
        if not folder or os.path.abspath(folder) == here:
            continue
        candidate = os.path.join(folder, "sitecustomize.py")
        if os.path.isfile(candidate):
            with open(candidate) as f:
                code = compile(f.read(), candidate, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": candidate})
            return


_chain()
