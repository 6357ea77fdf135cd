"""The benchmarks of ``iteach_fast``: ``python -m bench.run`` (or ``iteach-fast bench``) measures,
``python -m bench.report`` renders; see bench/README.md.

Modules: ``cases`` (what one measurement is), ``op_bench`` / ``model_bench`` / ``system_bench``
(the declarative entries), ``suite`` (the case list and presets), ``measure`` (timers, memory,
ceilings), ``counters`` (host syncs and launches), ``run``, ``report``, ``gpu_check`` (the GPU check's
preflight, build check and key tests; ``bench/gpu_check.sh`` runs it all), ``hide_modules`` (a
``sitecustomize`` that makes modules look absent, for the check's dry run).
"""
