"""Experiment grids (launch/experiments.py) and reports (launch/report.py); every YAML under configs/ is
instantiated in tests/test_configs.py."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

import experiments  # noqa: E402
import report  # noqa: E402

import flain  # noqa: E402,F401  (resolved once from this checkout; jsonargparse imports it by name later)

CONFIGS = ROOT / "configs"


def _grid(**kw) -> experiments.Grid:
    spec = dict(name="g", base="base.yaml", out_dir="out", seeds=[0, 1], overrides={}, axes={})
    spec.update(kw)
    return experiments.Grid(**spec)


# ----------------------------------------------------------------------------- grid expansion
def test_expand_is_the_cartesian_product_times_seeds_with_documented_names_and_order():
    # Prepare: 2 x 1 axis values, 2 seeds, a grid-level overlay and dotted overrides
    grid = _grid(overrides={"config": "O.yaml", "fed.rounds": 2},
                 axes={"a": {"x": {"config": "A.yaml"}, "y": {"config": ["B.yaml", "C.yaml"], "k.v": True}},
                       "b": {"0.1": {"--m.n": 0.1}}})
    # Execute
    cells = experiments.expand(grid)
    # Assert: first axis slowest, seeds fastest
    assert [(c.values, c.seed) for c in cells] == [
        ({"a": "x", "b": "0.1"}, 0), ({"a": "x", "b": "0.1"}, 1),
        ({"a": "y", "b": "0.1"}, 0), ({"a": "y", "b": "0.1"}, 1)]
    assert [c.run_dir for c in cells] == ["out/x_0.1/seed0", "out/x_0.1/seed1", "out/y_0.1/seed0", "out/y_0.1/seed1"]
    # files first (base, grid overlay, axis overlays in order), then dotted keys (grid, then axes)
    assert cells[3].args == [
        "--config", "base.yaml", "--config", "O.yaml", "--config", "B.yaml", "--config", "C.yaml",
        "--fed.rounds", "2", "--k.v", "true", "--m.n", "0.1",
        "--seed", "1", "--run_dir", "out/y_0.1/seed1", "--logger.group", "g",
        "--logger.name", "y_0.1-seed1", "--logger.job_type", "grid-cell", "--logger.tags", '["a=y", "b=0.1"]',
        "--logger.config", '{"a": "y", "b": "0.1", "seed": 1, "grid": "g"}', "--resume", "auto"]


def test_cell_names_replace_unsafe_characters_and_collisions_are_rejected():
    assert experiments.cell_name({"a": "x/y z", "b": "0.5"}) == "x-y-z_0.5"
    grid = _grid(axes={"a": {"x y": {}, "x/y": {}}})
    with pytest.raises(ValueError, match="same run directory"):
        experiments.expand(grid)


@pytest.mark.parametrize("text, field", [
    ("name: g\nbase: b.yaml\nseeds: []\n", "grid.seeds"),
    ("name: g\nseeds: [0]\n", "grid.base"),
    ("name: g\nbase: b.yaml\naxes: {seed: {a: {}}}\n", "'seed' is reserved"),
    ("name: g\nbase: b.yaml\naxes: {d: {a: 3}}\n", "grid.axes.d.a"),
    ("name: g\nbase: b.yaml\nrounds: 3\n", "unknown keys"),
])
def test_load_grid_rejects_bad_fields_by_name(tmp_path, text, field):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=field):
        experiments.load_grid(str(path))


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """2 cells x 1 round of TinyNet on embedded MNIST under BadNets: FedAvg and FLAIN."""
    out = tmp_path_factory.mktemp("grid") / "tiny"
    second = ("flain", str(CONFIGS / "paper/defenses/flain.yaml"))
    spec = {"name": "tiny", "base": str(ROOT / "tests/configs/tiny.yaml"), "out_dir": str(out), "seeds": [3],
            "overrides": {"config": str(ROOT / "tests/configs/badnets.yaml"), "fed.rounds": 1, "threads": 1},
            "axes": {"defense": {"fedavg": {"config": str(CONFIGS / "paper/defenses/fedavg.yaml")},
                                 second[0]: {"config": second[1]}}}}
    path = out.parent / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    grid = experiments.load_grid(str(path))
    counts = experiments.run_grid(grid, processes=2)
    return grid, counts, second[0]


def test_grid_runs_every_cell_and_writes_cells_json(tiny_grid):
    grid, counts, second = tiny_grid
    assert counts == {"ran": 2, "skipped": 0, "failed": 0}
    doc = json.loads((Path(grid.out_dir) / "cells.json").read_text())
    assert doc["axes"] == {"defense": ["fedavg", second]}
    assert [c["values"] for c in doc["cells"]] == [{"defense": "fedavg"}, {"defense": second}]
    for cell in doc["cells"]:
        summary = json.loads((Path(cell["run_dir"]) / "summary.json").read_text())
        assert summary["rounds"] == 1 and cell["status"].startswith("ok")
        assert Path(cell["run_dir"]) == Path(grid.out_dir) / cell["values"]["defense"] / "seed3"
        config = yaml.safe_load((Path(cell["run_dir"]) / "config.yaml").read_text())
        assert config["seed"] == 3 and config["logger"]["group"] == "tiny" and config["fed"]["rounds"] == 1


def test_rerun_skips_finished_cells(tiny_grid):
    grid, _, _ = tiny_grid
    assert experiments.run_grid(grid, processes=2) == {"ran": 0, "skipped": 2, "failed": 0}


def test_report_of_the_grid_matches_the_summaries(tiny_grid, tmp_path):
    grid, _, second = tiny_grid
    result = report.build_report(grid.out_dir, str(tmp_path / "rep"))
    lines = result["table"].splitlines()
    assert lines[0] == f"|  | fedavg | {second} |"
    fedavg = json.loads((Path(grid.out_dir) / "fedavg/seed3/summary.json").read_text())
    other = json.loads((Path(grid.out_dir) / f"{second}/seed3/summary.json").read_text())
    acc, asr = (f"{100 * fedavg['final'][k]:.1f}" for k in ("acc", "asr"))
    if second == "flain":
        f = other["flain"]
        cell = (f"{100 * f['acc_before']:.1f} / {100 * f['asr_before']:.1f} -> "
                f"{100 * f['acc_after']:.1f} / {100 * f['asr_after']:.1f}")
    else:
        cell = f"{100 * other['final']['acc']:.1f} / {100 * other['final']['asr']:.1f}"
    assert lines[2] == f"| all | {acc} / {asr} | {cell} |"
    assert (tmp_path / "rep/results.csv").is_file() and (tmp_path / "rep/curves/all.png").is_file()
    assert (tmp_path / "rep/flain_threshold.png").is_file() == (second == "flain")


def test_archive_only_copies_the_finished_cells_and_reports_like_the_grid(tiny_grid, tmp_path):
    grid, _, _ = tiny_grid
    counts = experiments.run_grid(grid, archive=str(tmp_path / "arch"), archive_only=True)
    assert counts == {"archived": 2, "in archive": 2, "cells": 2}
    store = tmp_path / "arch" / "tiny"
    doc = json.loads((store / "cells.json").read_text())
    ran = json.loads((Path(grid.out_dir) / "cells.json").read_text())
    assert doc["commits"] == ran["commits"] and doc["axes"] == ran["axes"]  # the code that ran, not this call's
    assert [c["status"] for c in doc["cells"]] == ["archived", "archived"]
    for cell in doc["cells"]:
        assert cell["run_dir"] == f"{cell['values']['defense']}/seed3"  # relative: the archive moves with the repo
        kept = sorted(p.name for p in (store / cell["run_dir"]).iterdir())
        assert kept == ["config.yaml", "metrics.csv", "rounds.jsonl", "summary.json"]  # no checkpoints, no models
        original = Path(grid.out_dir) / cell["values"]["defense"] / "seed3"
        assert (store / cell["run_dir"] / "summary.json").read_bytes() == (original / "summary.json").read_bytes()
    from_grid = report.build_report(grid.out_dir, str(tmp_path / "a"), plots=False)
    from_archive = report.build_report(str(store), str(tmp_path / "b"), plots=False)
    assert from_archive["table"] == from_grid["table"] and from_archive["finished"] == 2


def test_a_grid_continues_from_its_archive_after_its_run_directories_are_lost(tiny_grid, tmp_path):
    grid, _, second = tiny_grid
    archive = tmp_path / "arch"
    experiments.run_grid(grid, archive=str(archive), archive_only=True)
    lost = replace(grid, out_dir=str(tmp_path / "new_machine"))  # same grid, no run directories
    shutil.rmtree(archive / "tiny" / second)  # and one cell that never reached the archive
    counts = experiments.run_grid(lost, processes=1, archive=str(archive))
    assert counts == {"ran": 1, "skipped": 1, "failed": 0}  # only the missing cell trains
    assert not (Path(lost.out_dir) / "fedavg").exists()
    statuses = {c["values"]["defense"]: c["status"] for c in
                json.loads((Path(lost.out_dir) / "cells.json").read_text())["cells"]}
    assert statuses["fedavg"] == "skipped (archived)" and statuses[second].startswith("ok")
    rerun = json.loads((archive / "tiny" / second / "seed3" / "summary.json").read_text())  # archived on finishing
    first = json.loads((Path(grid.out_dir) / second / "seed3" / "summary.json").read_text())
    assert rerun["final"] == first["final"] and rerun.get("flain", {}).get("asr_after") == \
        first.get("flain", {}).get("asr_after")  # the same numbers again
    doc = json.loads((archive / "tiny" / "cells.json").read_text())
    assert [c["status"] for c in doc["cells"]] == ["archived", "archived"]


def test_where_runs_only_the_chosen_cells_and_lists_the_others_as_pending(tiny_grid, tmp_path):
    grid, _, second = tiny_grid
    fresh = replace(grid, out_dir=str(tmp_path / "out"))
    counts = experiments.run_grid(fresh, processes=1, where=["defense!=" + second, "seed=3"])
    assert counts == {"ran": 1, "skipped": 0, "failed": 0, "pending": 1}
    doc = json.loads((Path(fresh.out_dir) / "cells.json").read_text())
    assert [c["status"].split(" ")[0] for c in doc["cells"]] == ["ok", "pending"]
    assert experiments.run_grid(fresh, dry_run=True, where=["defense=fedavg"]) == \
        {"ran": 0, "skipped": 1, "failed": 0, "pending": 1, "waiting": 0}


def _timed_run(run_dir: Path, round_seconds: list[float]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{i},0.1,{s}\n" for i, s in enumerate(round_seconds))
    (run_dir / "metrics.csv").write_text("round,train_loss,round_seconds\n" + rows)
    (run_dir / "summary.json").write_text("{}")


def test_plan_estimates_training_time_from_the_finished_cells_round_times(tmp_path):
    # Prepare: 3 cells; one finished in out_dir, one only in the archive, one to run for 600 rounds
    grid = _grid(out_dir=str(tmp_path / "out"), seeds=[0], overrides={"fed.rounds": 40},
                 axes={"d": {"a": {}, "b": {}, "c": {"fed.rounds": 600}}})
    cells = experiments.expand(grid)
    store = tmp_path / "arch" / "g"
    _timed_run(Path(cells[0].run_dir), [10.0, 20.0, 30.0])
    _timed_run(experiments.archived_dir(cells[1], store), [40.0])
    with open(Path(cells[0].run_dir) / "metrics.csv", "a") as f:  # a row without a time and a cut-off one
        f.write("3,0.1,\n4,0.1,1e\n")
    # Execute
    text = experiments.plan_text(grid, cells, [cells[2]], store, processes=2)
    # Assert: median of the 4 round times is 30 s; 600 rounds x 30 s / 2 cells at a time = 2.5 h
    assert text.startswith("plan: 1 cells to run, 600 training rounds; the 2 finished cells")
    assert "median 30.0 s a round" in text and "about 2.5 h of training with --processes 2" in text
    # without the archive only out_dir's cell times it: median of 10, 20, 30 -> 600 x 20 / 1 = 3.3 h
    assert "about 3.3 h" in experiments.plan_text(grid, cells, [cells[2]], None, processes=1)
    assert experiments.plan_text(grid, cells, [], store, 2) == "plan: no cell left to run"
    assert experiments.plan_text(grid, cells, [], store, 2, waiting=3) == "plan: no cell ready to run; 3 wait for their source"
    untimed = _grid(out_dir=str(tmp_path / "none"), seeds=[0], axes={"d": {"a": {}}})
    assert "rounds come from the config files" in experiments.plan_text(
        untimed, experiments.expand(untimed), experiments.expand(untimed), None, 1)
    post = replace(grid, resume_from=(str(tmp_path / "out"),))
    assert "train no round" in experiments.plan_text(post, cells, cells[2:], None, 1)


@pytest.mark.parametrize("where, message", [
    ("seed=7", "seed has no value 7; its values are 3"),
    ("defense=krum,fedavg", "defense has no value krum"),
    ("attack=badnets", "no axis 'attack'; the grids' axes are defense, seed"),
])
def test_experiments_bad_where_is_a_short_error_before_anything_runs(tiny_grid, tmp_path, capsys, where, message):
    grid, _, _ = tiny_grid
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "base": grid.base, "out_dir": str(tmp_path / "out"),
                                    "seeds": [3], "axes": grid.axes}))
    with pytest.raises(SystemExit) as info:
        experiments.main(["--grid", str(path), "--where", where])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) <= 3
    assert "Traceback" not in err and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- report on known numbers
def _fake_run(run_dir: Path, acc: float, asr: float, flain: tuple[float, float] | None = None) -> None:
    run_dir.mkdir(parents=True)
    summary = {"rounds": 2, "final": {"acc": acc, "asr": asr}}
    if flain is not None:
        summary["flain"] = {"acc_before": acc, "asr_before": asr, "acc_after": flain[0], "asr_after": flain[1],
                            "k": 0.1, "curve": {"k": [0.0, 0.1], "aux_acc": [0.9, 0.89], "flipped": [0, 3]}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.csv").write_text(f"round,acc,asr\n0,0.5,0.5\n1,{acc},{asr}\n2,,\n")


def test_report_table_has_mean_and_std_over_seeds_and_before_after_for_flain(tmp_path):
    # Prepare: mcr {0.1, 0.2} x defense {fedavg, flain} x seeds {0, 1}
    numbers = {("0.1", "fedavg"): [(0.90, 0.10), (0.92, 0.30)], ("0.2", "fedavg"): [(0.80, 0.50), (0.80, 0.70)],
               ("0.1", "flain"): [(0.90, 0.10), (0.92, 0.30)], ("0.2", "flain"): [(0.80, 0.50), (0.80, 0.70)]}
    cells = []
    for (mcr, d), seeds in numbers.items():
        for seed, (acc, asr) in enumerate(seeds):
            run_dir = tmp_path / f"{mcr}_{d}" / f"seed{seed}"
            _fake_run(run_dir, acc, asr, (acc - 0.01, 0.0) if d == "flain" else None)
            cells.append({"values": {"mcr": mcr, "defense": d}, "seed": seed, "run_dir": str(run_dir)})
    (tmp_path / "cells.json").write_text(json.dumps(
        {"name": "fake", "axes": {"mcr": ["0.1", "0.2"], "defense": ["fedavg", "flain"]}, "cells": cells}))
    # Execute
    result = report.build_report(str(tmp_path), str(tmp_path / "rep"))
    # Assert: std is the sample std: (0.90, 0.92) -> 91.0 ± 1.4; (0.10, 0.30) -> 20.0 ± 14.1
    assert result["table"].splitlines() == [
        "| mcr | fedavg | flain |", "|---|---|---|",
        "| 0.1 | 91.0 ± 1.4 / 20.0 ± 14.1 | 91.0 ± 1.4 / 20.0 ± 14.1 -> 90.0 ± 1.4 / 0.0 ± 0.0 |",
        "| 0.2 | 80.0 ± 0.0 / 60.0 ± 14.1 | 80.0 ± 0.0 / 60.0 ± 14.1 -> 79.0 ± 0.0 / 0.0 ± 0.0 |"]
    with open(tmp_path / "rep/results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mcr"], r["column"], r["seeds"], r["post_training"]) for r in rows] == [
        ("0.1", "fedavg", "2", ""), ("0.1", "flain", "2", "flain"), ("0.2", "fedavg", "2", ""), ("0.2", "flain", "2", "flain")]
    assert float(rows[3]["acc_after_mean"]) == pytest.approx(0.79) and float(rows[2]["asr_mean"]) == pytest.approx(0.6)
    for name in ("asr_vs_mcr.png", "flain_threshold.png", "curves/0.1.png", "README.md"):
        assert (tmp_path / "rep" / name).is_file(), name
    # the claim check: ASR after 0% in both rows, ACC loss 1 pt in both -> met in 0 of 2 rows
    assert result["claim"][0] == ("**flain**: ASR after < 5% with < 0.5 pt clean-accuracy loss in 0 of 2 rows (mcr).")
    assert result["claim"][2] == "- not met: 0.1 (ASR 0.0%, ACC -1.0 pt); 0.2 (ASR 0.0%, ACC -1.0 pt)"
    assert "## Post-training defenses against the FLAIN paper's claim" in (tmp_path / "rep/README.md").read_text()


def test_report_marks_missing_cells_and_skips_absent_flain_curve(tmp_path):
    _fake_run(tmp_path / "a/seed0", 0.5, 0.25)
    cells = [{"values": {"defense": "a"}, "seed": 0, "run_dir": str(tmp_path / "a/seed0")},
             {"values": {"defense": "b"}, "seed": 0, "run_dir": str(tmp_path / "b/seed0")}]
    (tmp_path / "cells.json").write_text(json.dumps({"name": "x", "axes": {"defense": ["a", "b"]}, "cells": cells}))
    result = report.build_report(str(tmp_path), str(tmp_path / "rep"))
    assert result["table"].splitlines()[2] == "| all | 50.0 / 25.0 | – |"
    assert result["finished"] == 1 and not (tmp_path / "rep/flain_threshold.png").exists()


def test_claim_check_counts_rows_that_meet_both_bounds():
    def run(acc_b, acc_a, asr_a):
        return {"acc_before": acc_b, "acc_after": acc_a, "asr_before": 1.0, "asr_after": asr_a}
    groups = {(("a",), "flain"): [run(0.90, 0.898, 0.049)],  # met: ASR 4.9%, loss 0.2 pt
              (("b",), "flain"): [run(0.90, 0.894, 0.0)],    # missed: loss 0.6 pt
              (("c",), "flain"): [run(0.90, 0.91, 0.051)],   # missed: ASR 5.1%
              (("a",), "fedavg"): [{"acc": 0.9, "asr": 1.0}]}
    lines = report.claim_check(["mcr"], [("a",), ("b",), ("c",)], ["fedavg", "flain"], groups)
    assert lines[0].startswith("**flain**: ") and "in 1 of 3 rows (mcr)" in lines[0]
    assert lines[2] == "- not met: b (ASR 0.0%, ACC -0.6 pt); c (ASR 5.1%, ACC +1.0 pt)"
    assert len(lines) == 4  # fedavg has no post-training block: no claim lines


def test_report_wandb_logs_the_tables_and_plots_offline_in_the_grid_group(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _fake_run(tmp_path / "a/seed0", 0.5, 0.25, (0.49, 0.0))
    cells = [{"values": {"defense": "a"}, "seed": 0, "run_dir": str(tmp_path / "a/seed0")}]
    (tmp_path / "cells.json").write_text(json.dumps({"name": "grid-9c1e", "axes": {"defense": ["a"]}, "cells": cells}))
    report.main([str(tmp_path), "--out", str(tmp_path / "rep"), "--wandb"])
    runs = list((tmp_path / "rep" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = b""
    for _ in range(40):  # under load, wandb's writer may lag behind run.finish() for a moment
        records = next(runs[0].glob("run-*.wandb")).read_bytes()
        if b"grid-9c1e-report" in records:
            break
        time.sleep(0.25)
    for key in (b"grid-9c1e", b"grid-9c1e-report", b"results", b"plots/flain_threshold", b"report"):
        assert key in records, key
    tables = sorted(p.read_text() for p in (runs[0] / "files" / "media" / "table").rglob("*.json"))
    assert any('"asr_after"' in t and "0.49" in t for t in tables)  # the per-run table
    assert "W&B report run (offline)" in capsys.readouterr().out


class _FakeWandb:
    """Stands in for the wandb module: records what report.log_wandb hands it."""

    def __init__(self, run_dir: Path):
        self.logged, self.init_kwargs, self.run_dir = [], {}, run_dir
        fake = self

        class Table:
            def __init__(self, columns, data):
                self.columns, self.data = list(columns), [list(r) for r in data]

        class Image:
            def __init__(self, path):
                self.path = path

        class Run:
            summary: dict = {}
            dir = str(run_dir / "files")

            def log(self, data):
                fake.logged.append(data)

            def finish(self):
                pass

        self.Table, self.Image, self._run = Table, Image, Run()

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self._run


def test_report_wandb_tables_have_numeric_columns_and_string_axis_values(tmp_path, monkeypatch):
    fake = _FakeWandb(tmp_path / "wandb-run")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cells = []
    for mcr in ("0.1", "0.2"):
        for d in ("fedavg", "flain"):
            run_dir = tmp_path / f"{mcr}_{d}" / "seed0"
            _fake_run(run_dir, 0.9, 0.5, (0.89, 0.0) if d == "flain" else None)
            cells.append({"values": {"mcr": mcr, "defense": d}, "seed": 0, "run_dir": str(run_dir)})
    (tmp_path / "cells.json").write_text(json.dumps(
        {"name": "num", "axes": {"mcr": ["0.1", "0.2"], "defense": ["fedavg", "flain"]}, "cells": cells}))
    report.main([str(tmp_path), "--out", str(tmp_path / "rep"), "--wandb", "--no_plots"])
    assert fake.init_kwargs["group"] == "num" and fake.init_kwargs["name"] == "num-report"
    (logged,) = fake.logged
    results, runs = logged["results"], logged["runs"]
    row = dict(zip(results.columns, results.data[1]))  # mcr 0.1, flain
    assert row["mcr"] == "0.1" and row["column"] == "flain" and row["post_training"] == "flain"  # strings
    assert row["seeds"] == 1 and isinstance(row["seeds"], int)
    assert isinstance(row["acc_after_mean"], float) and row["acc_after_mean"] == pytest.approx(0.89)
    assert dict(zip(results.columns, results.data[0]))["acc_after_mean"] is None  # nan -> None (fedavg)
    for name in results.columns:  # a number column holds numbers (or None) only, never number strings
        if name not in ("mcr", "column", "seed_ids", "post_training"):
            assert all(v is None or isinstance(v, (int, float)) for v in (dict(zip(results.columns, r))[name]
                                                                          for r in results.data)), name
    per_run = dict(zip(runs.columns, runs.data[1]))
    assert per_run["mcr"] == "0.1" and per_run["defense"] == "flain" and per_run["seed"] == 0
    assert per_run["asr_after"] == 0.0 and per_run["k"] == pytest.approx(0.1)


def test_typed_columns_keeps_a_column_with_non_numbers_as_strings():
    rows = report.typed_columns(["a", "n", "k", "seeds"], [["0.1", "1.5", "0.1;0.2", "2"], ["x", "nan", "0.3", ""]],
                                ["a"])
    assert rows == [["0.1", 1.5, "0.1;0.2", 2], ["x", None, "0.3", None]]


# ----------------------------------------------------------------------------- report of one run directory
def _one_run(run_dir: Path) -> Path:
    """A run as fedsim writes it now: trained + final + two post-training blocks + provenance."""
    run_dir.mkdir(parents=True)
    trained = {"acc": 0.9, "asr": 0.8, "aux_acc": 0.91, "loss": 0.3, "per_class_acc": [0.9, 0.9]}
    curve = {"k": [0.0, 0.1], "aux_acc": [0.91, 0.905], "flipped": [0, 7]}
    summary = {"rounds": 2, "trained": trained, "final": {**trained, "asr": 0.01, "model": "flain"},
               "flain": {"acc_before": 0.9, "acc_after": 0.899, "asr_before": 0.8, "asr_after": 0.01,
                         "aux_acc_before": 0.91, "aux_acc_after": 0.905, "k": 0.1, "flipped_neurons": 7,
                         "total_neurons": 100, "curve": curve},
               "fine_pruning": {"acc_before": 0.9, "acc_after": 0.85, "asr_before": 0.8, "asr_after": 0.3},
               "provenance": {"seed": 4, "git": {"commit": "0123abc", "dirty": True}}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.csv").write_text("round,train_loss,acc,asr,aux_acc,flain/acc_after\n"
                                         "0,1.0,0.5,0.2,0.5,\n1,0.5,0.9,0.8,0.91,\n2,,,,,0.899\n")
    return run_dir


def test_report_of_a_single_run_directory(tmp_path, capsys):
    run_dir = _one_run(tmp_path / "runs" / "quick")
    result = report.main([str(run_dir)])
    out = run_dir / "report"
    text = (out / "README.md").read_text()
    assert text.startswith(f"# Run {run_dir}\n") and "seed 4; code at commit 0123abc (dirty)" in text
    assert result["table"].splitlines() == [
        "| model | ACC (%) | ASR (%) | aux ACC (%) | ACC change (pt) | ASR change (pt) | k | flipped neurons |",
        "|---|---|---|---|---|---|---|---|",
        "| trained (theta_T) | 90.0 | 80.0 | 91.0 | – | – |  |  |",
        "| fine_pruning | 85.0 | 30.0 | – | -5.00 | -50.0 |  |  |",
        "| flain **final** | 89.9 | 1.0 | 90.5 | -0.10 | -79.0 | 0.1 | 7 / 100 |"]
    assert result["claim"][0] == ("**fine_pruning**: ASR after < 5% with < 0.5 pt clean-accuracy loss in 0 of 1 "
                                  "rows (all).")
    assert "**flain**: ASR after < 5% with < 0.5 pt clean-accuracy loss in 1 of 1 rows (all)." in result["claim"]
    for name in ("curves.png", "flain_threshold.png", "results.csv"):
        assert (out / name).stat().st_size > 0, name
    assert "![curves](curves.png)" in text
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["final"]) for r in rows] == [("trained", "false"), ("fine_pruning", "false"),
                                                         ("flain", "true")]
    assert "1/1 runs" in capsys.readouterr().out


def test_report_of_a_single_old_run_reads_final_as_the_trained_model(tmp_path):
    run_dir = tmp_path / "old"
    _fake_run(run_dir, 0.5, 0.25, (0.49, 0.0))
    result = report.build_report(str(run_dir), str(tmp_path / "rep"))  # build_report dispatches too
    assert result["table"].splitlines()[2:] == ["| trained (theta_T) | 50.0 | 25.0 | – | – | – |  |  |",
                                                "| flain | 49.0 | 0.0 | – | -1.00 | -25.0 | 0.1 |  |"]


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_report_of_a_directory_with_neither_file_is_a_one_line_error(tmp_path, capsys, make):
    path = tmp_path / "nothing"
    if make == "empty":
        path.mkdir()
    with pytest.raises(SystemExit) as info:
        report.main([str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err and "Traceback" not in err
    assert ("neither cells.json" in err) == (make == "empty") and ("no such directory" in err) == (make == "missing")


def _grid_of(tmp_path: Path, values: list[dict]) -> Path:
    cells = []
    for i, v in enumerate(values):
        run_dir = tmp_path / f"cell{i}" / "seed0"
        _fake_run(run_dir, 0.9, 0.1 * i)
        cells.append({"values": v, "seed": 0, "run_dir": str(run_dir)})
    axes = {a: list(dict.fromkeys(v[a] for v in values)) for a in values[0]}
    (tmp_path / "cells.json").write_text(json.dumps({"name": "g", "axes": axes, "cells": cells}))
    return tmp_path


def test_report_where_keeps_the_runs_of_the_chosen_axis_values(tmp_path, capsys):
    values = [{"attack": a, "mcr": m, "defense": "fedavg"} for a in ("badnets", "dba", "a3fl") for m in ("0.1", "0.2")]
    grid = _grid_of(tmp_path, values)
    axes, runs = report.load_grids([str(grid)])[:2]
    kept_axes, kept = report.select(axes, runs, ["mcr=0.2", "attack!=dba"])
    assert [r["values"] for r in kept] == [values[1], values[5]]
    assert kept_axes == {"attack": ["badnets", "a3fl"], "mcr": ["0.2"], "defense": ["fedavg"]}
    assert len(report.select(axes, runs, ["seed=0"])[1]) == 6 and report.select(axes, runs, ["seed!=0"])[1] == []
    result = report.main([str(grid), "--out", str(tmp_path / "rep"), "--no_plots", "--where", "mcr=0.2",
                          "--where", "attack!=dba"])
    assert result["rows"] == [("badnets", "0.2"), ("a3fl", "0.2")] and result["runs"] == 2
    assert "--where 'mcr=0.2' --where 'attack!=dba'" in result["readme_block"]  # the command that made it


@pytest.mark.parametrize("where, message", [
    ("round=0", "no axis 'round'; the grids' axes are attack, mcr, defense, seed"),
    ("mcr", "--where must read axis=v1,v2 or axis!=v1,v2 (axes: attack, mcr, defense, seed), got 'mcr'"),
    ("mcr=", "--where must read axis=v1,v2"),
])
def test_report_bad_where_is_a_one_line_error_naming_the_axes(tmp_path, capsys, where, message):
    grid = _grid_of(tmp_path, [{"attack": "badnets", "mcr": "0.1", "defense": "fedavg"}])
    with pytest.raises(SystemExit) as info:
        report.main([str(grid), "--out", str(tmp_path / "rep"), "--where", where])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rep").exists()  # before any work


def test_report_refuses_a_run_directory_together_with_a_grid(tmp_path, capsys):
    run_dir = _one_run(tmp_path / "run")
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "cells.json").write_text(json.dumps({"name": "g", "axes": {}, "cells": []}))
    with pytest.raises(SystemExit) as info:
        report.main([str(tmp_path / "grid"), str(run_dir)])
    assert info.value.code == 2 and "reported alone" in capsys.readouterr().err


def test_experiments_wandb_flag_turns_on_wandb_in_every_cell(tmp_path, capsys):
    spec = {"name": "g", "base": str(ROOT / "tests/configs/tiny.yaml"), "out_dir": str(tmp_path / "g"),
            "seeds": [0], "axes": {"defense": {"fedavg": {"config": str(CONFIGS / "paper/defenses/fedavg.yaml")}}}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    experiments.main(["--grid", str(path), "--dry_run", "--wandb"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("run"))
    assert "--logger.wandb true" in line and "--logger.group g" in line


def test_value_restrictions_and_seeds_first_order(tmp_path):
    grid = experiments.Grid("g", "base.yaml", str(tmp_path), [0, 1, 2],
                            {"mcr": {"0.1": {}, "0.2": {}},
                             "defense": {"fedavg": {}, "krum": {"only": {"mcr": ["0.2"]}, "seeds": [0, 1],
                                                                "aggregator.init_args.f": 3}}},
                            {}, "seeds_first")
    cells = experiments.expand(grid)
    got = [(c.values["mcr"], c.values["defense"], c.seed) for c in cells]
    # fedavg: 2 mcr x 3 seeds; krum: mcr 0.2 only, seeds 0 and 1; seed 0's cells first
    assert got == [("0.1", "fedavg", 0), ("0.2", "fedavg", 0), ("0.2", "krum", 0),
                   ("0.1", "fedavg", 1), ("0.2", "fedavg", 1), ("0.2", "krum", 1),
                   ("0.1", "fedavg", 2), ("0.2", "fedavg", 2)]
    krum = next(c for c in cells if c.values["defense"] == "krum")
    assert "--aggregator.init_args.f" in krum.args and "--only" not in krum.args and "--seeds" not in krum.args


@pytest.mark.parametrize("axes, field", [
    ({"a": {"x": {"only": {"b": ["nope"]}}}, "b": {"y": {}}}, "grid.axes.a.x.only.b"),
    ({"a": {"x": {"seeds": [5]}}}, "grid.axes.a.x.seeds"),
])
def test_bad_restrictions_name_the_field(tmp_path, axes, field):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "base": "b.yaml", "seeds": [0], "axes": axes}))
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        experiments.load_grid(str(path))


def test_readme_block_is_replaced_between_its_markers_and_missing_markers_fail(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- report:g -->\nold text\n<!-- /report:g -->\noutro\n")
    report.write_readme_block(readme, "g", "new line\n")
    assert readme.read_text() == "intro\n<!-- report:g -->\nnew line\n<!-- /report:g -->\noutro\n"
    with pytest.raises(SystemExit) as exit_info:
        report.write_readme_block(readme, "other", "x\n")
    assert exit_info.value.code == 2 and "report:other" in capsys.readouterr().err


def test_accuracy_floor_lists_the_rows_below_it():
    rows = [("iid",), ("dir",)]
    groups = {(("iid",), "fedavg"): [{"acc": 0.986}, {"acc": 0.988}], (("dir",), "fedavg"): [{"acc": 0.984}],
              (("iid",), "fedavg+flain"): [{"acc": 0.5}]}
    (line,) = report.accuracy_floor(["distribution"], rows, ["fedavg", "fedavg+flain"], groups)
    assert "mean 98.55%" in line and "lowest 98.40%" in line  # rows 98.7% and 98.4% and "below 98.5%: dir (98.40%)." in line


def test_best_robust_aggregator_meets_the_bounds_first_then_has_the_lowest_asr_then_the_highest_accuracy():
    rows = [("iid",), ("dir",), ("mix",)]
    groups = {(("iid",), "fedavg"): [{"acc": 0.98, "asr": 1.0}], (("dir",), "fedavg"): [{"acc": 0.98, "asr": 1.0}],
              (("iid",), "fedavg+flain"): [{"acc": 0.98, "asr": 1.0, "acc_before": 0.98, "acc_after": 0.97,
                                            "asr_before": 1.0, "asr_after": 0.0}],
              (("iid",), "krum"): [{"acc": 0.95, "asr": 0.02}, {"acc": 0.97, "asr": 0.04}],  # ASR 3%
              (("dir",), "krum"): [{"acc": 0.90, "asr": 0.0}],
              (("iid",), "deepsight"): [{"acc": 0.98, "asr": 0.5}],
              (("dir",), "deepsight"): [{"acc": 0.97, "asr": 0.0}],  # ties krum on ASR, higher ACC
              # median meets both bounds (ASR 3%, -0.1 pt); krum has the lower ASR at -8 pt: median is best
              (("mix",), "fedavg"): [{"acc": 0.98, "asr": 1.0}], (("mix",), "krum"): [{"acc": 0.90, "asr": 0.0}],
              (("mix",), "deepsight"): [{"acc": 0.979, "asr": 0.03}]}
    cols = ["fedavg", "fedavg+flain", "krum", "deepsight"]
    assert report.robust_columns(cols, groups) == ["krum", "deepsight"]  # not FedAvg, not its FLAIN blocks
    best = report.best_robust(rows, cols, groups)
    assert {r: c for r, (c, _) in best.items()} == {("iid",): "krum", ("dir",): "deepsight", ("mix",): "deepsight"}
    table = report.markdown_table(["distribution"], rows, cols, groups, best).splitlines()
    assert table[0].endswith("| best robust aggregator |")
    assert table[2].endswith("| krum: 96.0 ± 1.4 / 3.0 ± 1.4 |") and table[3].endswith("| deepsight: 97.0 / 0.0 |")
    assert report.best_robust(rows, ["krum", "deepsight"], groups) == {}  # no FedAvg to be robust against


def test_robust_check_measures_a_training_time_defense_against_fedavg_of_the_same_row():
    rows = [("iid",), ("dir",), ("x",)]
    groups = {(("iid",), "fedavg"): [{"acc": 0.986, "asr": 1.0, "seed": 0}, {"acc": 0.984, "asr": 1.0, "seed": 1},
                                     {"acc": 0.95, "asr": 1.0, "seed": 2}],  # seeds 0-1: mean 98.5%
              (("dir",), "fedavg"): [{"acc": 0.985, "asr": 1.0, "seed": 0}],
              (("iid",), "fedavg+flain"): [{"acc": 0.985, "asr": 1.0, "acc_before": 0.985, "acc_after": 0.98,
                                            "asr_before": 1.0, "asr_after": 0.0, "seed": 0}],
              (("iid",), "flame"): [{"acc": 0.981, "asr": 0.0, "seed": 0},
                                    {"acc": 0.981, "asr": 0.098, "seed": 1}],  # ASR 4.9%, -0.4 pt
              (("dir",), "flame"): [{"acc": 0.979, "asr": 0.0, "seed": 5}],   # no FedAvg seed 5: all of its: -0.6 pt
              (("x",), "flame"): [{"acc": 0.99, "asr": 0.0, "seed": 0}],      # no FedAvg in the row: not checked
              (("iid",), "median"): [{"acc": 0.986, "asr": 0.06, "seed": 0}]}  # ASR 6%, against seed 0 only
    cols = ["fedavg", "fedavg+flain", "flame", "median"]
    lines = report.robust_check(["distribution"], rows, cols, groups)
    assert lines[0].startswith("**flame** (during training") and "in 1 of 2 rows (distribution)" in lines[0]
    assert lines[2] == "- not met: dir (ASR 0.0%, ACC -0.6 pt)"
    assert "in 0 of 1 rows" in lines[4] and lines[6] == "- not met: iid (ASR 6.0%, ACC +0.0 pt)"
    assert len(lines) == 8  # fedavg and its FLAIN block are not training-time defenses
    assert report.robust_check(["distribution"], rows, ["flame", "median"], groups) == []  # no FedAvg


def test_headline_table_shows_changes_for_post_training_columns_and_bolds_what_misses_the_bounds():
    rows = [("iid",), ("dir",), ("x",)]
    def post(before, after, asr_after, seed):
        return {"acc": before, "asr": 1.0, "acc_before": before, "acc_after": after, "asr_before": 1.0,
                "asr_after": asr_after, "seed": seed}
    groups = {(("iid",), "fedavg"): [{"acc": 0.986, "asr": 1.0, "seed": 0}, {"acc": 0.984, "asr": 0.998, "seed": 1}],
              (("iid",), "fedavg+flain"): [post(0.986, 0.985, 0.0, 0), post(0.984, 0.981, 0.02, 1)],
              (("iid",), "fedavg+v"): [post(0.986, 0.980, 0.06, 0)],     # -0.6 pt, ASR 6%: both bold
              (("iid",), "flame"): [{"acc": 0.980, "asr": 0.0, "seed": 0}],  # 0.6 pt below FedAvg seed 0: bold
              (("iid",), "median"): [{"acc": 0.986, "asr": 0.9, "seed": 0}],
              (("dir",), "fedavg"): [{"acc": 0.98, "asr": 1.0, "seed": 0}]}
    cols = ["fedavg", "fedavg+flain", "fedavg+v", "flame", "median"]
    best = report.best_robust(rows, cols, groups)
    table = report.headline_table(["distribution"], rows, ["fedavg", "fedavg+flain", "fedavg+v"], groups, best)
    lines = table.splitlines()
    assert lines[0] == "| distribution | fedavg | fedavg+flain | fedavg+v | best robust aggregator |"
    # FedAvg: means 98.50 ± 0.14 / 99.9 ± 0.1; FLAIN: changes -0.1 and -0.3 pt -> -0.20 ± 0.14, ASR 1.0 ± 1.4
    assert lines[2] == ("| iid | 98.50 ± 0.14 / 99.9 ± 0.1 | -0.20 ± 0.14 / 1.0 ± 1.4 | **-0.60** / **6.0** | "
                        "flame: **98.00** / 0.0 |")
    assert lines[3] == "| dir | 98.00 / 100.0 | – | – | – |"  # no robust rule ran in the row
    assert len(lines) == 4  # the row "x" has no finished run: left out
    groups[(("x",), "median")] = [{"acc": 0.986, "asr": 0.9, "seed": 0}]  # no FedAvg in the row: ACC unchecked
    assert report.headline_table(["distribution"], rows, ["median"], groups).splitlines()[2:] == [
        "| iid | 98.60 / **90.0** |", "| x | 98.60 / **90.0** |"]
    groups[(("iid",), "flame")] = [{"acc": 0.982, "asr": 0.0, "seed": 0}]  # 0.4 pt below: not bold
    assert report.headline_table(["distribution"], rows, ["fedavg"], groups, best).splitlines()[2].endswith(
        "| flame: 98.20 / 0.0 |")


def test_report_headline_is_at_the_top_and_becomes_the_readme_block(tmp_path):
    values = [{"attack": a, "defense": "fedavg"} for a in ("badnets", "dba")]
    grid = _grid_of(tmp_path, values)
    result = report.main([str(grid), "--out", str(tmp_path / "rep"), "--no_plots", "--headline", "fedavg"])
    text = (tmp_path / "rep" / "README.md").read_text()
    assert text.index("Headline: ") < text.index("| attack | fedavg |\n|---|---|\n| badnets | 90.0 / 0.0 |")
    assert "| attack | fedavg |\n|---|---|\n| badnets | 90.00 / 0.0 |\n| dba | 90.00 / 10.0 |" in result["readme_block"]
    assert "--headline fedavg" in result["readme_block"]  # the command that made it
    assert "**fedavg**" not in result["readme_block"]  # FedAvg is the reference, not a checked rule


def test_report_headline_block_checks_its_training_time_rules_against_fedavg(tmp_path):
    # cell0: FedAvg 90.0 / 0.0; cell1: Krum 90.0 / 10.0 (ASR 10%: misses); cell2: median, not in the headline
    values = [{"attack": "badnets", "defense": d} for d in ("fedavg", "krum", "median")]
    grid = _grid_of(tmp_path, values)
    result = report.main([str(grid), "--out", str(tmp_path / "rep"), "--no_plots", "--headline", "fedavg,krum"])
    block = result["readme_block"]
    assert "| attack | fedavg | krum | best robust aggregator |" in block
    assert "| badnets | 90.00 / 0.0 | 90.00 / **10.0** | krum: 90.00 / **10.0** |" in block  # krum: lower ASR than median
    assert "**krum** (during training" in block and "- not met: badnets (ASR 10.0%, ACC +0.0 pt)" in block
    assert "**median**" not in block


def test_report_rows_follow_the_axes_order_when_a_later_grid_adds_values(tmp_path):
    a = _grid_of(tmp_path / "a", [{"attack": "x", "mcr": m, "defense": "fedavg"} for m in ("0.2", "0.4")])
    b = _grid_of(tmp_path / "b", [{"attack": "plain", "mcr": m, "defense": "fedavg"} for m in ("0.2", "0.4")])
    result = report.build_report([str(a), str(b)], str(tmp_path / "rep"), plots=False)
    assert result["rows"] == [("x", "0.2"), ("x", "0.4"), ("plain", "0.2"), ("plain", "0.4")]
    result = report.build_report([str(b), str(a)], str(tmp_path / "rep"), plots=False)
    assert result["rows"] == [("plain", "0.2"), ("plain", "0.4"), ("x", "0.2"), ("x", "0.4")]
    c = _grid_of(tmp_path / "c", [{"mcr": m, "attack": "x", "defense": "fedavg"} for m in ("0.4", "0.2")])
    result = report.build_report([str(b), str(c)], str(tmp_path / "rep"), plots=False)
    # axes merged in first-seen order: attack (plain, x) then mcr (0.2, 0.4), whatever c's own order
    assert result["rows"] == [("plain", "0.2"), ("plain", "0.4"), ("x", "0.2"), ("x", "0.4")]


@pytest.mark.parametrize("headline", ["fedavg,nope", "krum"])
def test_report_unknown_headline_column_is_a_one_line_error_before_any_work(tmp_path, capsys, headline):
    grid = _grid_of(tmp_path, [{"attack": "badnets", "defense": "fedavg"}])
    with pytest.raises(SystemExit) as info:
        report.main([str(grid), "--out", str(tmp_path / "rep"), "--headline", headline])
    err = capsys.readouterr().err
    bad = headline.split(",")[-1]
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"--headline: no column '{bad}'; the report's columns: fedavg" in err
    assert not (tmp_path / "rep").exists()


def test_a_cell_in_two_grids_is_one_run_with_the_blocks_of_both(tmp_path):
    """A resume_from grid's cell and its source cell (same axis values and seed) are reported as
    one run: its trained model once (no duplicated seed), the post-training blocks of both grids."""
    def block(after):
        return {"acc_before": 0.9, "asr_before": 1.0, "acc_after": after, "asr_after": 0.0}
    for grid, names in (("src", ("a", "b")), ("res", ("c", "d"))):
        run_dir = tmp_path / grid / "x" / "seed0"
        run_dir.mkdir(parents=True)
        summary = {"rounds": 2, "trained": {"acc": 0.9, "asr": 1.0}}
        summary.update({n: block(0.8 + 0.01 * i) for i, n in enumerate(names)})
        (run_dir / "summary.json").write_text(json.dumps(summary))
        (run_dir / "metrics.csv").write_text("round,acc,asr\n0,0.5,0.5\n1,0.9,1.0\n")
        cells = [{"values": {"defense": "fedavg"}, "seed": 0, "run_dir": str(run_dir)},
                 {"values": {"defense": "fedavg"}, "seed": 1, "run_dir": str(tmp_path / grid / "x" / "seed1")}]
        (tmp_path / grid / "cells.json").write_text(json.dumps({"name": grid, "axes": {"defense": ["fedavg"]},
                                                                "cells": cells}))
    result = report.build_report([str(tmp_path / "src"), str(tmp_path / "res")], str(tmp_path / "rep"), plots=False)
    assert result["columns"] == ["fedavg", "fedavg+a", "fedavg+b", "fedavg+c", "fedavg+d"]
    assert result["finished"] == 1 and result["runs"] == 2  # seed 0 once, seed 1 missing in both
    assert result["table"].splitlines()[2] == ("| all | 90.0 / 100.0 | 90.0 / 100.0 -> 80.0 / 0.0 | 90.0 / 100.0 -> "
                                               "81.0 / 0.0 | 90.0 / 100.0 -> 80.0 / 0.0 | 90.0 / 100.0 -> 81.0 / 0.0 |")


def test_mean_std_text_signs_the_mean_only():
    assert report.mean_std_text([-0.0003, -0.0009], 100, "+.2f") == "-0.06 ± 0.04"
    assert report.mean_std_text([0.5], 100, "+.2f") == "+50.00" and report.mean_std_text([]) == "–"
    groups = {(("iid",), "fedavg+flain"): [{"k": 0.01, "acc_before": 0.9, "acc_after": 0.9 - d, "asr_after": 0.0,
                                             "flipped_neurons": 10} for d in (0.0003, 0.0009)]}
    row = report.flain_table(["distribution"], [("iid",)], ["fedavg+flain"], groups).splitlines()[2]
    assert "| -0.06 ± 0.04 |" in row and "± +" not in row


def test_report_names_the_hardware_that_ran_the_runs():
    def run(hw):
        return {"summary": {"provenance": {"hardware": hw} if hw else {}}}
    epyc = {"machine": "x86_64", "cpu": "AMD EPYC", "cpu_capability": "AVX2", "gpu": None}
    h200 = {**epyc, "gpu": "NVIDIA H200"}
    runs = [run(epyc), run(None), run(epyc), run(h200), {"summary": None}]
    assert report.hardware_text(runs) == "AMD EPYC (AVX2) x2, unrecorded x1, NVIDIA H200 x1"
    assert report.hardware_text([run(None), {"summary": None}]) == ""  # older runs: nothing to say


def _fedavg_grid(tmp_path: Path, name: str, numbers: dict[tuple[str, int], tuple[float, float]]) -> Path:
    """A fake grid: mcr x seed -> (acc, asr) of a fedavg run."""
    root, cells = tmp_path / name, []
    for (mcr, seed), (acc, asr) in numbers.items():
        run_dir = root / f"{mcr}_fedavg" / f"seed{seed}"
        _fake_run(run_dir, acc, asr)
        cells.append({"values": {"mcr": mcr, "defense": "fedavg"}, "seed": seed, "run_dir": str(run_dir)})
    (root / "cells.json").write_text(json.dumps(
        {"name": name, "axes": {"mcr": sorted({m for m, _ in numbers}), "defense": ["fedavg"]}, "cells": cells}))
    return root


def test_report_compare_names_the_rows_it_reproduces_and_those_that_differ(tmp_path, capsys):
    # Prepare: an earlier report of seeds 0-1 in two rows, a rerun where row 0.2's seed 1 changed
    # and row 0.3 has only seed 0
    earlier = _fedavg_grid(tmp_path, "a", {("0.1", 0): (0.90, 0.10), ("0.1", 1): (0.92, 0.30),
                                       ("0.2", 0): (0.80, 0.50), ("0.2", 1): (0.80, 0.70), ("0.3", 0): (0.7, 0.9),
                                       ("0.3", 1): (0.7, 0.9)})
    rerun = _fedavg_grid(tmp_path, "b", {("0.1", 0): (0.90, 0.10), ("0.1", 1): (0.92, 0.30),
                                     ("0.2", 0): (0.80, 0.50), ("0.2", 1): (0.81, 0.70), ("0.3", 0): (0.7, 0.9)})
    report.main([str(earlier), "--out", str(tmp_path / "ra"), "--no_plots"])
    # Execute: --out is the folder it compares with (read before it is overwritten)
    shutil.copytree(tmp_path / "ra", tmp_path / "rb")
    result = report.main([str(rerun), "--out", str(tmp_path / "rb"), "--no_plots", "--compare", str(tmp_path / "rb")])
    # Assert
    assert result["compare"] == {"identical": 1, "differs": 1, "not comparable": 1, "only earlier": 0, "only here": 0}
    out = capsys.readouterr().out
    assert "3 rows" not in out and "2 rows with the same seeds in both, 1 identical in every number and 1 differ" in out
    assert "- 0.2 / fedavg (2 seeds): acc_mean 80 -> 80.5 (2 numbers differ)" in out  # ACC mean and std
    assert "## Against an earlier report" in (tmp_path / "rb/README.md").read_text()
    # seed ids decide, not only their number: seed 1 alone is not seed 0 alone
    one = _fedavg_grid(tmp_path, "c", {("0.1", 1): (0.92, 0.30)})
    zero = _fedavg_grid(tmp_path, "d", {("0.1", 0): (0.92, 0.30)})
    report.main([str(zero), "--out", str(tmp_path / "rd"), "--no_plots"])
    result = report.main([str(one), "--out", str(tmp_path / "rc"), "--no_plots", "--compare", str(tmp_path / "rd")])
    assert result["compare"]["not comparable"] == 1 and result["compare"]["identical"] == 0


def test_compare_results_without_seed_ids_matches_by_count_and_says_so():
    old = {("0.1", "fedavg"): {"seeds": "1", "acc_mean": "0.9", "acc_std": "0"},
           ("0.2", "fedavg"): {"seeds": "1", "acc_mean": "0.8", "acc_std": "0"}}
    new = {("0.1", "fedavg"): {"seeds": "1", "seed_ids": "0", "acc_mean": "0.9", "acc_std": "0"},
           ("0.3", "fedavg"): {"seeds": "2", "seed_ids": "0 1", "acc_mean": "0.7", "acc_std": "0"}}
    lines, counts = report.compare_results(old, new, "old.csv")
    assert counts == {"identical": 1, "differs": 0, "not comparable": 0, "only earlier": 1, "only here": 1}
    assert "does not list its seeds" in lines[0]


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "report.py: error: --compare: No such file or directory: "),
    (lambda p: p.write_text("a,b\n1,2\n"), "not a report's results.csv (no 'seeds' column)")])
def test_report_bad_compare_is_a_one_line_error_before_any_work(tmp_path, capsys, make, message):
    grid = _fedavg_grid(tmp_path, "a", {("0.1", 0): (0.9, 0.1)})
    make(tmp_path / "old.csv")
    with pytest.raises(SystemExit) as exc:
        report.main([str(grid), "--out", str(tmp_path / "rep"), "--compare", str(tmp_path / "old.csv")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rep").exists()


def test_report_compare_matches_rows_by_axis_names_whatever_their_order(tmp_path, capsys):
    # _grid_of gives run i the ASR 0.1 * i: the same values in the same cell order, axes swapped
    a = _grid_of(tmp_path / "a", [{"attack": "x", "mcr": m, "defense": "fedavg"} for m in ("0.2", "0.4")])
    b = _grid_of(tmp_path / "b", [{"mcr": m, "attack": "x", "defense": "fedavg"} for m in ("0.2", "0.4")])
    report.main([str(a), "--out", str(tmp_path / "ra"), "--no_plots"])
    result = report.main([str(b), "--out", str(tmp_path / "rb"), "--no_plots", "--compare", str(tmp_path / "ra")])
    assert result["compare"]["identical"] == 2 and result["compare"]["differs"] == 0
    other = _grid_of(tmp_path / "c", [{"dist": "iid", "mcr": m, "defense": "fedavg"} for m in ("0.2", "0.4")])
    with pytest.raises(SystemExit):
        report.main([str(other), "--out", str(tmp_path / "rc"), "--no_plots", "--compare", str(tmp_path / "ra")])
    assert "keys its rows by attack, mcr, column; this report by dist, mcr, column" in capsys.readouterr().err
