"""The evaluation tier: what a trained model is worth, and on new data what it says.

Owns: the paper's protocols (:mod:`.protocols`: UME, IME, the demo, the streaming demo), the
baselines every result stands beside and the data's gaps (:mod:`.baselines`, :mod:`.gaps`),
the per-rate tables (:mod:`.tables`), prediction on new conversations (:mod:`.predict`) and
every figure (:mod:`.plots`).
May import: :mod:`iteach_fast.training` (to train and score), :mod:`iteach_fast.nn`,
:mod:`iteach_fast.data`, :mod:`iteach_fast.ops` and the leaves; nothing of reproduce.
"""
