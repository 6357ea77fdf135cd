"""The named recipes: the demo's and ``reproduce --quick``'s settings and the seeds a
reproduction runs. A leaf module (plain values, no torch), so that the command line's help can
show them without loading the model.
"""
from __future__ import annotations

import os

__all__ = ["DEMO_DEFAULTS", "QUICK", "DEFAULT_SEEDS", "QUICK_SEEDS"]

#: the demo's recipe, chosen on the synthetic data's validation split (experiments/README.md):
#: small synthetic conversations and a small model, so that it ends in a few minutes on 2 CPU
#: cores; the framework's own mixers (its: TF teacher, NAS student); the paper's architecture
#: (cross_ecce off), with ECCE's band narrowed to the conversations' emotion runs (dist 3) and
#: 40 epochs (the 10 of the first release stopped before the model had learnt)
DEMO_DEFAULTS = dict(syn_conversations=120, syn_max_len=60, dim=32, heads=4, max_len=60, epochs=40, batch_size=8,
                     lr=1e-3, router_lr=1e-2, dropout=0.1, dist=3, strategy="random", framework="its",
                     select_rates=(0.0, 0.3, 0.5, 0.7), out_dir=os.path.join("runs", "demo"))

#: ``reproduce --quick``: the demo's recipe (small synthetic set and model), the progressive
#: schedule compressed to reach 0.7 within its epochs (eight steps: 0.0, 0.1, ..., 0.7)
QUICK = {**{k: v for k, v in DEMO_DEFAULTS.items() if k not in ("framework", "strategy", "out_dir")},
         "progressive_every": max(1, DEMO_DEFAULTS["epochs"] // 8)}

#: the paper runs each model three times (§4.4); ``--quick`` runs one seed unless told otherwise
DEFAULT_SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)
