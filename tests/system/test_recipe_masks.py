"""experiments/recipe.py's ``masks``: with mask seed 0 it scores exactly what ``run`` and the
cached baselines scored (the same models, the same masks), and other mask seeds draw other masks."""
import json
import os

import numpy as np
import pytest

from tests.system.helpers import experiment


def test_masks_mask_zero_is_runs_own_and_the_report_pairs_by_seed(tmp_path):
    recipe = experiment("recipe")
    recipe.BASE = {**recipe.BASE, "syn_conversations": 16, "syn_max_len": 12, "max_len": 12, "dim": 8, "heads": 2}
    recipe.VARIANTS = {"tiny": {"epochs": 1, "dist": 3, "early_fusion": "all", "recurrent": True}}
    out = str(tmp_path)
    for seed in (0, 1):
        recipe.run_one(out, "tiny", seed)
    scores = recipe.mask_scores(out, "tiny", 0, 2)
    with open(os.path.join(out, "runs", "tiny-s0", "result.json")) as f:
        result = json.load(f)
    cached = recipe.baselines(out, 0, "tiny")["test"]["rows"]
    np.testing.assert_allclose(scores["waf"]["student"][0], result["student_test"])
    for name in ("gru", "logreg_context"):
        np.testing.assert_allclose(scores["waf"][name][0], [r["waf"] for r in cached[name]])
    assert scores["waf"]["student"][1] != scores["waf"]["student"][0]  # another draw of the masks
    assert set(scores["kept"]["student"]) == {"text", "audio", "visual"}
    text = recipe.mask_report(out, "tiny", 2)
    assert "2 seeds (0..1), 2 test masks per rate" in text and "mean of 2 masks" in text
    assert os.path.isfile(os.path.join(out, "runs", "tiny-s1", "masks.json"))


def test_masks_without_finished_runs_names_the_folder(tmp_path):
    recipe = experiment("recipe")
    os.makedirs(tmp_path / "runs")
    with pytest.raises(SystemExit, match="no finished run of paper-e10") as err:
        recipe.mask_report(str(tmp_path), "paper-e10", 2)
    assert str(tmp_path) in str(err.value)


def test_report_shows_a_variant_on_other_data_beside_its_own_baselines(tmp_path):
    recipe = experiment("recipe")
    recipe.BASE = {**recipe.BASE, "syn_conversations": 16, "syn_max_len": 12, "max_len": 12, "dim": 8, "heads": 2}
    tiny = {"epochs": 1, "dist": 3}
    recipe.VARIANTS = {"paper-e10": {}, "tiny": tiny, "tiny-n24": {**tiny, "syn_conversations": 24}}
    out = str(tmp_path)
    for name in ("tiny", "tiny-n24"):
        recipe.run_one(out, name, 0)
    text = recipe.report(out, ["tiny", "tiny-n24"])
    assert "| best baseline, tiny-n24's data and draw | 0 |" in text
    assert "best baseline, tiny's data" not in text  # the default data: the first row is its own
    ours = recipe.baselines(out, 0, "tiny-n24")["test"]["rows"]
    best = np.maximum(*[[r["waf"] for r in ours[n]] for n in ("logreg_context", "gru")])
    assert " | ".join(f"{x:.2f}" for x in best) in text
