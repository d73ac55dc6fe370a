"""Plots: a run's curves.png (fedsim.curves), the grid report's plots (launch/report.py) and
FLAIN's figures (flain/plots.py), on small fake run directories; no training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

import report  # noqa: E402
from fedsim import curves  # noqa: E402
from flain.functional import ThresholdResult  # noqa: E402
from flain.plots import activations_figure, plot_activations, plot_threshold, threshold_figure  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() is not None for t in ax.get_legend().get_texts()]


def write_run(run_dir: Path, rounds: int = 3, attack: bool = True, blocks: dict | None = None,
              final: str = "trained", eval_every: int = 1) -> Path:
    """A fake run directory: metrics.csv as fedsim writes it (round 0-based, acc on evaluated
    rounds only, one post-training row at step = rounds without train_loss) and summary.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    keys = ["round", "train_loss", "acc", "aux_acc", "loss", "class_acc/0"] + (["asr"] if attack else [])
    lines = [",".join(keys + ["flain/acc_after"])]
    for r in range(rounds):
        evaluated = (r + 1) % eval_every == 0 or r + 1 == rounds
        acc = 0.5 + 0.1 * r
        vals = {"round": r, "train_loss": 1.0 / (r + 1), "acc": acc, "aux_acc": acc - 0.01, "loss": 1.0,
                "class_acc/0": acc, "asr": 0.2 * (r + 1)}
        lines.append(",".join(str(vals[k]) if (evaluated or k in ("round", "train_loss")) else "" for k in keys) + ",")
    if blocks:  # the post-training row: step = rounds, no train_loss, no plain acc
        lines.append(f"{rounds}," + "," * (len(keys) - 1) + "0.123")
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    last = 0.5 + 0.1 * (rounds - 1)
    trained = {"acc": last, "aux_acc": last - 0.01, "loss": 1.0, "per_class_acc": [last]}
    if attack:
        trained["asr"] = 0.2 * rounds
    summary = {"rounds": rounds, "trained": trained, "final": {**trained, "model": final},
               "provenance": {"seed": 7, "git": {"commit": "abc123", "dirty": False}}}
    summary.update(blocks or {})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def flain_block(acc_before: float, asr_before: float | None, acc_after: float, asr_after: float | None,
                k: float = 0.05, layers: int = 1) -> dict:
    block = {"acc_before": acc_before, "acc_after": acc_after, "aux_acc_before": 0.9, "aux_acc_after": 0.899,
             "flipped_neurons": 12, "total_neurons": 100, "mode": "exact"}
    if asr_before is not None:
        block.update(asr_before=asr_before, asr_after=asr_after)
    curve = {"k": [0.0, 0.02, k], "aux_acc": [0.9, 0.9, 0.899], "flipped": [0, 5, 12]}
    if layers == 1:
        block.update(k=k, curve=curve, layers=["fc1"])
    else:
        block.update(k=[k] * layers, curve=[curve] * layers, layers=[f"fc{i + 1}" for i in range(layers)])
    return block


# ----------------------------------------------------------------------------- curves.png of one run
@pytest.mark.parametrize("attack, rounds", [(True, 4), (False, 4), (True, 1), (False, 1)],
                         ids=["attack", "no-attack", "single-round", "single-round-no-attack"])
def test_plot_run_curves_writes_a_png_with_and_without_attack_and_for_one_round(tmp_path, attack, rounds):
    blocks = {"flain": flain_block(0.8, 0.8 if attack else None, 0.79, 0.0 if attack else None)}
    run = write_run(tmp_path / "run", rounds=rounds, attack=attack, blocks=blocks, final="flain")
    path = curves.plot_run_curves(run)
    assert path == run / "curves.png"
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG
    fig = curves.run_curves_figure(run)
    assert len(fig.axes) == (2 if attack else 1)  # no ASR panel without an attack
    texts = _legend_texts(fig)
    assert "clean ACC" in texts and "aux ACC" in texts and "flain (after, final)" in texts
    assert ("ASR" in texts) == attack
    for ax in fig.axes:  # integer round ticks, the last round among them
        assert all(float(t).is_integer() for t in ax.get_xticks()) and rounds - 1 in ax.get_xticks()


def test_plot_run_curves_marks_each_block_at_the_last_round_and_rings_a_trained_final(tmp_path):
    blocks = {"flain": flain_block(0.7, 0.6, 0.69, 0.0), "flain_reference": flain_block(0.7, 0.6, 0.68, 0.05)}
    run = write_run(tmp_path / "run", rounds=3, blocks=blocks, final="trained")
    fig = curves.run_curves_figure(run)
    acc_ax = fig.axes[0]
    by_label = {ln.get_label(): ln for ln in acc_ax.get_lines()}
    assert set(by_label) == {"clean ACC", "aux ACC", "trained (final)", "flain (after)", "flain_reference (after)"}
    assert list(by_label["clean ACC"].get_xdata()) == [0, 1, 2]  # rounds exactly as in metrics.csv
    for name, acc in (("flain", 69.0), ("flain_reference", 68.0)):
        x, y = by_label[f"{name} (after)"].get_xdata()[0], by_label[f"{name} (after)"].get_ydata()[0]
        assert x == pytest.approx(2, abs=0.2) and y == pytest.approx(acc)
    ticks = [t for t in acc_ax.get_xticks() if acc_ax.get_xlim()[0] <= t <= acc_ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_plot_run_curves_accepts_the_summary_before_summary_json_exists(tmp_path):
    run = write_run(tmp_path / "run", rounds=2)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    assert curves.plot_run_curves(run, summary).stat().st_size > 0


def test_read_curve_uses_the_round_column_as_is_and_skips_post_training_rows(tmp_path):
    run = write_run(tmp_path / "run", rounds=4, eval_every=2, blocks={"flain": flain_block(0.8, 0.8, 0.8, 0.0)})
    expected = {1: pytest.approx(0.6), 3: pytest.approx(0.8)}  # evaluated rounds 1 and 3, 0-based, no shift
    assert curves.read_curve(run, "acc") == expected
    assert report.read_curve(run, "acc") == expected
    assert 4 not in curves.read_curve(run, "flain/acc_after")  # the post-training row is no round
    assert curves.last_round(run) == 3


# ----------------------------------------------------------------------------- the grid report's plots
def _grid(tmp_path: Path) -> Path:
    """attack {a, b} x mcr {0.1, 0.2} x defense {fedavg (3 FLAIN blocks, 2 layers for one), krum} x
    seeds {0, 1}."""
    cells = []
    for attack, mcr in [(a, m) for a in ("a", "b") for m in ("0.1", "0.2")]:
        for defense in ("fedavg", "krum"):
            for seed in (0, 1):
                run_dir = tmp_path / f"{attack}_{mcr}_{defense}" / f"seed{seed}"
                asr = 0.5 + 0.1 * seed
                blocks = {"flain": flain_block(0.7, asr, 0.69, 0.01 * seed),
                          "flain_reference": flain_block(0.7, asr, 0.68, 0.02),
                          "flain_confident": flain_block(0.7, asr, 0.7, 0.03, layers=2)} if defense == "fedavg" else {}
                write_run(run_dir, rounds=3, blocks=blocks)
                cells.append({"values": {"attack": attack, "mcr": mcr, "defense": defense}, "seed": seed,
                              "run_dir": str(run_dir)})
    (tmp_path / "cells.json").write_text(json.dumps({"name": "plots", "axes": {
        "attack": ["a", "b"], "mcr": ["0.1", "0.2"], "defense": ["fedavg", "krum"]}, "cells": cells}))
    return tmp_path


@pytest.fixture
def grid_figures(tmp_path, monkeypatch):
    figures = {}
    save = report._save

    def keep(fig, path):
        figures[Path(path).relative_to(tmp_path / "rep").as_posix()] = fig
        return save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    result = report.build_report(str(_grid(tmp_path)), str(tmp_path / "rep"))
    return result, figures


def test_report_curves_draw_a_pseudo_column_once_as_end_markers(grid_figures):
    result, figures = grid_figures
    assert result["columns"] == ["fedavg", "fedavg+flain", "fedavg+flain_confident", "fedavg+flain_reference", "krum"]
    fig = figures["curves/a_0.1.png"]
    acc_ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in acc_ax.get_lines()}
    # one training line per real column; each pseudo-column only a marker at the last round (2)
    assert {k for k in lines if "after" not in k} == {"fedavg", "krum"}
    assert list(lines["fedavg"].get_xdata()) == [0, 1, 2]
    for block, acc in (("flain", 69.0), ("flain_reference", 68.0), ("flain_confident", 70.0)):
        marker = lines[f"fedavg+{block} (after)"]
        assert len(marker.get_xdata()) == 1 and marker.get_xdata()[0] == pytest.approx(2, abs=0.3)
        assert marker.get_ydata()[0] == pytest.approx(acc)
        assert marker.get_color() == lines["fedavg"].get_color()  # same run as fedavg
    assert lines["fedavg"].get_linestyle() != lines["krum"].get_linestyle()
    assert lines["fedavg"].get_marker() != lines["krum"].get_marker()
    assert len({lines[f"fedavg+{b} (after)"].get_marker() for b in ("flain", "flain_reference", "flain_confident")}) == 3


def test_report_asr_vs_mcr_has_error_bars_and_one_y_scale(grid_figures):
    _, figures = grid_figures
    fig = figures["asr_vs_mcr.png"]
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]  # one panel per attack
    assert all(ax.get_ylim() == fig.axes[0].get_ylim() for ax in fig.axes)
    assert fig.axes[0].get_ylim()[0] <= 0 and fig.axes[0].get_ylim()[1] >= 100
    texts = _legend_texts(fig)
    assert {"fedavg", "fedavg+flain", "krum"} <= set(texts)
    # errorbar containers hold the std over seeds: fedavg+flain's ASR after 0 and 1% -> std 0.71 pt
    containers = {c.get_label(): c for c in fig.axes[0].containers}
    low, high = containers["fedavg+flain"].lines[2][0].get_segments()[0]
    assert high[1] - low[1] == pytest.approx(2 * 0.7071, abs=0.001)
    assert (containers["fedavg+flain"].lines[0].get_linestyle()
            != containers["fedavg"].lines[0].get_linestyle())


def test_report_threshold_plot_has_a_panel_per_row_and_a_line_per_block_and_layer(grid_figures):
    _, figures = grid_figures
    fig = figures["flain_threshold.png"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["a 0.1", "a 0.2", "b 0.1", "b 0.2"]
    texts = [t.get_text() for t in panels[0].get_legend().get_texts()]
    assert texts == ["fedavg+flain", "fedavg+flain_confident [fc1]", "fedavg+flain_confident [fc2]",
                     "fedavg+flain_reference", "chosen k (circled)"]


def test_threshold_curves_accepts_a_dict_or_a_list_of_dicts():
    one, two = flain_block(0.7, 0.5, 0.7, 0.0), flain_block(0.7, 0.5, 0.7, 0.0, layers=2)
    assert [(b, layer, k) for b, layer, _, k in report.threshold_curves({"a": one, "b": two})] == [
        ("a", None, 0.05), ("b", "fc1", 0.05), ("b", "fc2", 0.05)]
    assert report.threshold_curves({"a": {**one, "curve": None}}) == []


# ----------------------------------------------------------------------------- FLAIN's figures
def _threshold_result(layer: str = "fc1", k: float | None = 0.2) -> ThresholdResult:
    return ThresholdResult(k=k, flipped=3, total=8, aux_acc_before=0.9, aux_acc_search=0.9, tolerance_reached=True,
                           mode="exact", curve=[(0.0, 0.9, 1), (0.1, 0.9, 2), (0.2, 0.89, 3)], layer=layer)


def test_flain_activation_plot_highlights_flipped_neurons_and_the_threshold(tmp_path):
    clean = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9])
    triggered = torch.tensor([0.9, 0.8, 0.7, 0.5, 0.6, 0.7, 0.8, 0.9])
    res = _threshold_result()
    path = plot_activations(tmp_path / "act.png", [res], [clean], [triggered])  # the callback's call
    assert path.stat().st_size > 1000
    fig = activations_figure([res], [clean], [triggered])
    texts = _legend_texts(fig)
    for text in ("clean aux inputs", "triggered aux inputs", "threshold k = 0.2", "flipped (3 neurons)",
                 "kept (5 neurons)", "clean = triggered", "flipped range 0 <= a <= k (3 neurons)"):
        assert text in texts, (text, texts)
    hist, scatter = fig.axes
    assert "activation" in hist.get_xlabel() and "count" in hist.get_ylabel()
    assert scatter.get_ylabel().startswith("triggered aux inputs: mean activation")
    red = [c for c in scatter.collections if c.get_label() == "flipped (3 neurons)"][0]
    assert sorted(red.get_offsets()[:, 0].tolist()) == pytest.approx([0.0, 0.1, 0.2])


def test_flain_activation_plot_without_triggered_inputs_and_with_two_layers(tmp_path):
    results = [_threshold_result("fc1"), _threshold_result("fc2", k=None)]
    acts = [torch.rand(8), torch.rand(8)]
    assert plot_activations(tmp_path / "act.png", results, acts, [None, None]).stat().st_size > 1000
    texts = _legend_texts(activations_figure(results, acts, [None, None]))
    assert "triggered aux inputs" not in texts and "flipped (0 neurons)" in texts


def test_flain_threshold_plot_has_a_legend_for_every_line(tmp_path):
    res = _threshold_result()
    assert plot_threshold(tmp_path / "thr.png", [res]).stat().st_size > 1000  # the callback's call
    fig = threshold_figure([res])
    texts = _legend_texts(fig)
    assert texts == ["aux accuracy at k", "aux accuracy of theta_T (90.0%)", "chosen k = 0.2 (3/8 flipped)",
                     "flipped input neurons"]
    ax = fig.axes[0]
    assert ax.get_ylabel() == "aux accuracy (%)" and "threshold k" in ax.get_xlabel()
