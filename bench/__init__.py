"""The benchmarks of ``iteach_fast``: ``python -m bench.run`` (or ``iteach-fast bench``) measures,
``python -m bench.report`` renders; see bench/README.md.

Modules: ``cases`` (what one measurement is), ``op_bench`` / ``model_bench`` / ``system_bench``
(the declarative entries), ``suite`` (the case list and presets), ``measure`` (timers, memory,
ceilings), ``counters`` (host syncs and launches), ``run``, ``report``.
"""
