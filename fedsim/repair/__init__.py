"""Post-training repair baselines that sit beside FLAIN: fine-pruning, federated pruning,
server fine-tuning. Each is a ``fedsim.posttrain.PostTrainingDefense``."""

from fedsim.repair.finepruning import FinePruning
from fedsim.repair.finetune import FineTuning
from fedsim.repair.flpruning import FLPruning

__all__ = ["FinePruning", "FLPruning", "FineTuning"]
