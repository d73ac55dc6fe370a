"""FLAIN: a post-training backdoor defense for federated learning.

Ding, Yang, Huang, "FLAIN: Mitigating Backdoor Attacks in Federated Learning via Flipping Weight
Updates of Low-Activation Input Neurons", ICMR 2025 (arXiv 2408.08655).
"""

from flain.activations import FlipEvaluator, LayerSpec, NetworkSplit, repairable_layers, resolve_layer
from flain.callback import FLAIN, summarize
from flain.functional import (ThresholdResult, check_config, flain_repair, flip_columns, flip_mask,
                              search_threshold)

__all__ = ["FLAIN", "FlipEvaluator", "LayerSpec", "NetworkSplit", "ThresholdResult", "check_config",
           "flain_repair", "flip_columns", "flip_mask", "repairable_layers", "resolve_layer",
           "search_threshold", "summarize"]
