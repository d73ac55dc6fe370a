"""Aggregation rules. Every concrete class is imported here so ``class_path`` short names resolve."""

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext, ServerContext
from fedsim.aggregators.bulyan import Bulyan
from fedsim.aggregators.clipping import NormClipping
from fedsim.aggregators.deepsight import DeepSight
from fedsim.aggregators.fedavg import FedAvg
from fedsim.aggregators.flame import FLAME
from fedsim.aggregators.fltrust import FLTrust
from fedsim.aggregators.foolsgold import FoolsGold
from fedsim.aggregators.geomed import RFA, GeometricMedian
from fedsim.aggregators.krum import Krum, MultiKrum
from fedsim.aggregators.median import Median
from fedsim.aggregators.multimetrics import MultiMetrics
from fedsim.aggregators.rlr import RLR
from fedsim.aggregators.trimmed_mean import TrimmedMean

__all__ = [
    "AggregationResult",
    "Aggregator",
    "RoundContext",
    "ServerContext",
    "FedAvg",
    "Bulyan",
    "DeepSight",
    "FLAME",
    "FLTrust",
    "FoolsGold",
    "GeometricMedian",
    "Krum",
    "Median",
    "MultiKrum",
    "MultiMetrics",
    "NormClipping",
    "RFA",
    "RLR",
    "TrimmedMean",
]
