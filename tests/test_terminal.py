"""The end-of-run terminal table (fedsim.terminal)."""

from __future__ import annotations

from fedsim.terminal import summary_table


def test_a_multi_layer_flain_block_whose_first_layer_flipped_nothing_prints_none(tmp_path):
    summary = {"rounds": 3, "trained": {"acc": 0.9, "asr": 0.5, "aux_acc": 0.88},
               "flain": {"acc_before": 0.9, "acc_after": 0.89, "asr_before": 0.5, "asr_after": 0.1,
                         "aux_acc_before": 0.88, "aux_acc_after": 0.87, "k": [None, 0.0123],
                         "flipped_neurons": 7, "total_neurons": 40, "seconds": 1.5}}
    table = summary_table(summary, tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("flain"))
    assert "k=none, 0.0123, 7 of 40 input neurons flipped, 1.5 s" in row
    assert "89.0%" in row and "10.0%" in row
