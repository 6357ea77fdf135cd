"""The training tier: a run's config, where and how it computes, its checkpoints, the step
and the loop (Inverted Teacher-Student training), data parallelism, and how a model is scored
on a split (model selection).

Owns: :mod:`.config` (TrainConfig), :mod:`.runtime` (device, precision, threads, seeds),
:mod:`.checkpoint` (run files, the run lock, the one model loader), :mod:`.distributed` (DDP
under torchrun), :mod:`.validation` (predictions at fixed masks, metrics), :mod:`.step`
(a batch, the optimiser, one step, a CUDA-graphed step) and :mod:`.loop` (``train``).
May import: :mod:`iteach_fast.nn`, :mod:`iteach_fast.ops`, :mod:`iteach_fast.data` and the
leaves (``choices``, ``files``); nothing of evaluation or reproduce, which build on it.
"""
