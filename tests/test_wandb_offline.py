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


class FakeRun:
    """Records what the simulator hands to W&B (a stand-in for ``wandb.init``'s run)."""

    def __init__(self, **kwargs):
        self.init, self.logged, self.summary, self.id = kwargs, [], {}, "fake-run"

    def define_metric(self, *args, **kwargs):
        pass

    def log(self, values):
        self.logged.append(values)

    def finish(self):
        pass


class FakeWandb:
    def __init__(self):
        self.runs = []

    def init(self, **kwargs):
        self.runs.append(FakeRun(**kwargs))
        return self.runs[-1]

    Histogram = Image = staticmethod(lambda *a, **k: ("media", a))

    @staticmethod
    def Table(columns, data):
        return {"columns": columns, "data": data}


def test_wandb_summary_holds_the_final_model_and_the_trained_one_under_a_prefix(tmp_path, monkeypatch, capsys):
    import sys

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    summary = main(["--config", str(TINY), "--config", str(TINY.parent / "badnets.yaml"),
                    "--run_dir", str(tmp_path / "run"), "--logger.wandb", "true"])
    (run,) = fake.runs
    assert summary["final"]["model"] == "flain"  # the overlay's FLAIN has apply: true (default)
    assert run.summary["asr"] == summary["flain"]["asr_after"] == summary["final"]["asr"]
    assert run.summary["trained/asr"] == summary["trained"]["asr"] == summary["flain"]["asr_before"]
    assert run.summary["final_model"] == "flain"
    steps = [v["round"] for v in run.logged if "acc" in v]
    assert steps == sorted(set(steps))  # one log call with the round's scalars per round
    out = capsys.readouterr().out
    assert "trained (theta_T)" in out and "<- final model" in out and "flipped" in out
    assert f"run folder: {tmp_path / 'run'}" in out
