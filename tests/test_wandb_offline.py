"""W&B logging works offline (no login, no network) and records what the README promises."""

import os
import time

from fedsim.cli import main

from conftest import TINY


def test_wandb_offline_run_records_metrics_flain_histograms_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    main(["--config", str(TINY), "--config", str(TINY.parent / "badnets.yaml"), "--run_dir", str(run_dir),
          "--logger.wandb", "true", "--logger.group", "group-7f3a"])
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # A smoke test that the real offline writer works (what is logged is checked through a fake
    # wandb below); wandb's service may still be flushing the file for a moment under load.
    keys = (b"acc", b"asr", b"class_acc/3", b"flain/fc2/activation_clean", b"flain/fc2/activation_triggered",
            b"flain/asr_after", b"group-7f3a")
    deadline = time.time() + 60
    while True:
        records = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
        if all(k in records for k in keys) or time.time() > deadline:
            break
        time.sleep(0.5)
    for key in keys:
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

    def log_artifact(self, artifact):
        self.artifacts = getattr(self, "artifacts", []) + [artifact]


class FakeWandb:
    def __init__(self):
        self.runs = []

    def init(self, **kwargs):
        self.runs.append(FakeRun(**kwargs))
        return self.runs[-1]

    Image = staticmethod(lambda *a, **k: ("image", a))

    @staticmethod
    def Histogram(np_histogram=None, **kwargs):
        return {"histogram": np_histogram}

    @staticmethod
    def Table(columns, data):
        return {"columns": columns, "data": data}

    class Artifact:
        def __init__(self, name, type, description=""):
            self.name, self.type, self.files = name, type, []

        def add_file(self, path):
            self.files.append(path)

    class plot:  # noqa: N801 - mirrors wandb.plot
        @staticmethod
        def line(table, x, y, title=""):
            return {"line": (x, y), "title": title, "table": table}


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
    assert run.init["job_type"] == "train"
    # FLAIN: clean and triggered activation histograms in one call, on the same bins
    (hists,) = [v for v in run.logged if "flain/fc2/activation_clean" in v]
    clean, trig = hists["flain/fc2/activation_clean"], hists["flain/fc2/activation_triggered"]
    assert list(clean["histogram"][1]) == list(trig["histogram"][1])
    (chart,) = [v["flain/fc2/curve_chart"] for v in run.logged if "flain/fc2/curve_chart" in v]
    assert chart["line"] == ("k", "aux_acc")
    # post-training scalars: one W&B call at the end, and posttrain.csv, not metrics.csv
    (post,) = [v for v in run.logged if "flain/asr_after" in v]
    assert post["flain/fc2/k"] == summary["flain"]["k"] and "flain/fc2/aux_acc_after" not in post
    with open(tmp_path / "run" / "metrics.csv") as f:
        rounds = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    assert rounds == ["0", "1", "2"]  # exactly one row per round
    assert "flain" in (tmp_path / "run" / "posttrain.csv").read_text()


def test_grid_cells_get_names_tags_and_axis_config_on_wandb(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(TINY.parents[2] / "launch"))
    import experiments

    grid = experiments.Grid("g7", str(TINY), str(tmp_path), [3], {"mcr": {"0.2": {"fed.rounds": 1}}}, {})
    (cell,) = experiments.expand(grid)
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    main(cell.args + ["--logger.wandb", "true", "--logger.artifacts", "true"])
    (run,) = fake.runs
    (art,) = run.artifacts  # opt-in: the final model and the trained one (theta_T in last.ckpt)
    assert art.type == "model" and [p.rsplit("/", 1)[-1] for p in art.files] == ["final_model.pt", "last.ckpt"]
    assert run.init["config"]["provenance"]["world_size"] == 1 and "config_sha256" in run.init["config"]["provenance"]
    assert run.init["name"] == "0.2-seed3" and run.init["group"] == "g7" and run.init["job_type"] == "grid-cell"
    assert run.init["tags"] == ["mcr=0.2"]
    assert run.init["config"]["mcr"] == 0.2 and run.init["config"]["seed"] == 3  # numbers stay numbers
