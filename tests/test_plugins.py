"""The README's "Write your own ..." examples, run exactly as printed: each Python block becomes
part of a file my_plugins.py outside the package, and a training run uses them by class_path."""

import re

import yaml

from fedsim.cli import main

from conftest import ROOT, TINY


def _readme_section():
    text = (ROOT / "README.md").read_text()
    start = text.index("## Write your own aggregator, attack or post-training defense")
    return text[start:text.index("\n## ", start + 10)]


def test_readme_plugins_run_from_a_file_outside_the_package(tmp_path, monkeypatch):
    section = _readme_section()
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3 and all(b.startswith("# my_plugins.py") for b in blocks)
    (tmp_path / "my_plugins.py").write_text("\n\n".join(blocks))
    monkeypatch.syspath_prepend(str(tmp_path))
    overlay = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)[-1]
    (tmp_path / "plugins.yaml").write_text(overlay)
    assert yaml.safe_load(overlay)["aggregator"]["class_path"] == "my_plugins.ClippedMean"
    summary = main(["--config", str(TINY), "--config", str(tmp_path / "plugins.yaml"),
                    "--run_dir", str(tmp_path / "run"), "--fed.rounds", "2"])
    assert summary["shrink"]["alpha"] == 0.9 and summary["final"]["model"] == "shrink"
    # ctx.evaluate (this rank alone) gives exactly the base class's collective "after" figure
    assert summary["shrink"]["aux_acc_check"] == summary["shrink"]["aux_acc_after"]
    assert 0 <= summary["trained"]["acc"] <= 1
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert "clipped_share" in f.readline()  # the aggregator's own metric was logged


def test_two_fine_pruning_configurations_run_side_by_side(tmp_path):
    # Every post-training defense takes `name`: two fine-pruning configurations get their own
    # summary keys and repaired files, and both start from the same trained model.
    overlay = tmp_path / "two.yaml"
    overlay.write_text(yaml.safe_dump({"callbacks": [
        {"class_path": "fedsim.repair.FinePruning",
         "init_args": {"layer": "fc1", "tolerance": 0.0, "finetune_epochs": 0, "apply": False, "name": "fp_strict"}},
        {"class_path": "fedsim.repair.FinePruning",
         "init_args": {"layer": "fc1", "tolerance": 0.5, "max_prune_ratio": 0.5, "finetune_epochs": 0,
                       "apply": False, "name": "fp_loose"}},
    ]}))
    summary = main(["--config", str(TINY), "--config", str(overlay), "--run_dir", str(tmp_path / "run"),
                    "--fed.rounds", "2"])
    strict, loose = summary["fp_strict"], summary["fp_loose"]
    assert "fine_pruning" not in summary and summary["final"]["model"] == "trained"
    assert loose["pruned_channels"] == 8 > strict["pruned_channels"]  # floor(0.5 x 16) at tolerance 0.5
    assert strict["acc_before"] == loose["acc_before"] == summary["trained"]["acc"]
    assert (tmp_path / "run" / "fp_strict_repaired.pt").is_file() and (tmp_path / "run" / "fp_loose_repaired.pt").is_file()
