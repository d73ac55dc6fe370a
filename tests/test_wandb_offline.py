"""W&B logging works offline (no login, no network) and records what the README promises."""

import os

from fedsim.cli import main

from conftest import TINY


def test_wandb_offline_run_records_metrics_flain_histograms_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    main(["--config", str(TINY), "--config", str(TINY.parent / "badnets.yaml"), "--run_dir", str(run_dir),
          "--logger.wandb", "true", "--logger.group", "group-7f3a"])
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"acc", b"asr", b"class_acc/3", b"flain/fc2/activation_clean", b"flain/fc2/activation_triggered",
                b"flain/asr_after", b"group-7f3a"):
        assert key in records, key
    assert list((runs[0] / "files" / "media" / "table").rglob("*.json"))  # FLAIN's threshold curve
    assert os.environ["WANDB_MODE"] == "offline"
