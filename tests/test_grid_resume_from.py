"""Grids with ``resume_from``: new post-training defenses on runs another grid already trained."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

import experiments  # noqa: E402

CONFIGS = ROOT / "configs"


def _spec(name: str, out: Path, defense: str, seeds=(3, 4), **kw) -> dict:
    return {"name": name, "base": str(ROOT / "tests/configs/tiny.yaml"), "out_dir": str(out), "seeds": list(seeds),
            "overrides": {"config": str(ROOT / "tests/configs/badnets.yaml"), "fed.rounds": 1, "threads": 1},
            "axes": {"defense": {"fedavg": {"config": defense}}}, **kw}


def _load(tmp_path: Path, spec: dict) -> experiments.Grid:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return experiments.load_grid(str(path))


def test_a_resume_from_grid_runs_only_the_callbacks_on_the_trained_models(tmp_path):
    trained = _load(tmp_path, _spec("trained", tmp_path / "trained", str(CONFIGS / "paper/defenses/fedavg.yaml"),
                                    seeds=[3]))
    assert experiments.run_grid(trained) == {"ran": 1, "skipped": 0, "failed": 0}
    # seed 4 has no trained run yet: it waits instead of failing or training
    post = _load(tmp_path, _spec("post", tmp_path / "post", str(CONFIGS / "paper/defenses/flain_rules.yaml"),
                                 resume_from=str(tmp_path / "trained")))
    assert experiments.run_grid(post, dry_run=True)["waiting"] == 1
    assert experiments.run_grid(post) == {"ran": 1, "skipped": 0, "failed": 0, "waiting": 1}
    src, dst = tmp_path / "trained/fedavg/seed3", tmp_path / "post/fedavg/seed3"
    before, after = (json.loads((d / "summary.json").read_text()) for d in (src, dst))
    assert "flain" not in before and after["flain_reference"]["acc_before"] == before["trained"]["acc"]
    assert after["trained"] == before["trained"]  # the same model, not retrained
    src_model, dst_model = (torch.load(d / "final_model.pt", weights_only=True) for d in (src, dst))
    src_model, dst_model = (m["params"] if isinstance(m, dict) else m for m in (src_model, dst_model))
    assert torch.equal(src_model, dst_model)  # the FLAIN rules run with apply: false
    doc = json.loads((tmp_path / "post/cells.json").read_text())
    status = {c["seed"]: c["status"] for c in doc["cells"]}
    assert status[3].startswith("ok") and status[4].startswith("waiting")
    assert doc["cells"][0]["source"] == str(src)


def _cells_json(grid_dir: Path, cells: list[tuple[dict, int, str]]) -> None:
    grid_dir.mkdir(parents=True, exist_ok=True)
    doc = {"cells": [{"values": v, "seed": s, "run_dir": str(grid_dir / folder / f"seed{s}")} for v, s, folder in cells]}
    (grid_dir / "cells.json").write_text(json.dumps(doc))


def test_sources_are_matched_by_axis_values_in_list_order(tmp_path):
    values = {"defense": "fedavg", "attack": "badnets"}  # folder fedavg_badnets here, badnets_fedavg in the sources
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _cells_json(a, [({"attack": "dba", "defense": "fedavg"}, 0, "dba_fedavg")])  # lists another cell only
    _cells_json(b, [({"attack": "badnets", "defense": "fedavg"}, 0, "badnets_fedavg"),
                    ({"attack": "badnets", "defense": "fedavg"}, 1, "badnets_fedavg")])
    (c / "fedavg_badnets/seed1").mkdir(parents=True)  # no cells.json: matched by folder name
    spec = _spec("post", tmp_path / "post", "x.yaml", resume_from=[str(a), str(c), str(b)])
    spec["axes"] = {"defense": {"fedavg": {}}, "attack": {"badnets": {}}}
    grid = _load(tmp_path, spec)
    assert experiments.source_dir(grid, values, 0) == b / "badnets_fedavg/seed0"
    assert experiments.source_dir(grid, values, 1) == c / "fedavg_badnets/seed1"  # c comes before b
    assert experiments.source_dir(grid, values, 2) == a / "fedavg_badnets/seed2"  # nobody has it: waits in the first
    assert experiments.source_dir(grid, {"defense": "fedavg", "attack": "dba"}, 0) == a / "dba_fedavg/seed0"


def test_a_cell_left_out_with_only_is_resumed_from_the_grid_that_trained_it(tmp_path):
    fedavg = str(CONFIGS / "paper/defenses/fedavg.yaml")
    regime = _spec("regime", tmp_path / "regime", fedavg, seeds=[3])
    regime["axes"] = {"attack": {"badnets": {}}, "defense": {"fedavg": {"config": fedavg}}}
    assert experiments.run_grid(_load(tmp_path, regime)) == {"ran": 1, "skipped": 0, "failed": 0}
    # another grid, axes in another order, trains badnets only under another defense ...
    other = _spec("other", tmp_path / "other", fedavg, seeds=[3])
    other["axes"] = {"defense": {"fedavg": {"config": fedavg}, "median": {"config": str(CONFIGS / "paper/defenses/median.yaml")}},
                     "attack": {"badnets": {"only": {"defense": ["median"]}}}}
    other_grid = _load(tmp_path, other)
    assert [c.values for c in experiments.expand(other_grid)] == [{"defense": "median", "attack": "badnets"}]
    _cells_json(tmp_path / "other", [])
    # ... and its post-training grid finds the FedAvg run in the regime grid
    post = _spec("post", tmp_path / "post", str(CONFIGS / "paper/defenses/flain_rules.yaml"), seeds=[3],
                 resume_from=[str(tmp_path / "other"), str(tmp_path / "regime")])
    post["axes"] = {"defense": {"fedavg": {"config": str(CONFIGS / "paper/defenses/flain_rules.yaml")}},
                    "attack": {"badnets": {}}}
    assert experiments.run_grid(_load(tmp_path, post)) == {"ran": 1, "skipped": 0, "failed": 0}
    src, dst = tmp_path / "regime/badnets_fedavg/seed3", tmp_path / "post/fedavg_badnets/seed3"
    before, after = (json.loads((d / "summary.json").read_text()) for d in (src, dst))
    assert after["trained"] == before["trained"] and after["flain_reference"]["acc_before"] == before["trained"]["acc"]
    assert json.loads((tmp_path / "post/cells.json").read_text())["cells"][0]["source"] == str(src)


@pytest.mark.parametrize("value, message", [
    ("", "grid.resume_from must be the out_dir of a trained grid"),
    ([], "grid.resume_from must be the out_dir of a trained grid or a non-empty list"),
    (["x", 3], "grid.resume_from must be the out_dir of a trained grid or a non-empty list"),
    ("SAME", "grid.resume_from must differ from grid.out_dir"),
])
def test_bad_resume_from_names_the_field(tmp_path, value, message):
    out = tmp_path / "g"
    spec = _spec("g", out, "x.yaml", resume_from=str(out) if value == "SAME" else value)
    with pytest.raises(ValueError, match=message):
        _load(tmp_path, spec)
