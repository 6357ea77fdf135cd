"""The data tier: conversations, features, missing-modality masks and the data checks.

Owns: the dataset types and the batch collation (:mod:`.dataset`), the synthetic generator
(:mod:`.synthetic`), GCNet's feature files (:mod:`.gcnet`), which data a run names
(:mod:`.sources`), GCNet's missing-modality sampler (:mod:`.masking`), and ``check-data`` /
``export-synthetic`` (:mod:`.check`).
May import: :mod:`iteach_fast.choices`, :mod:`iteach_fast.files`; nothing of the model or of
the other application concerns (training, evaluation, reproduce).
"""
