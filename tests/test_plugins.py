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
    assert 0 <= summary["trained"]["acc"] <= 1
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert "clipped_share" in f.readline()  # the aggregator's own metric was logged
