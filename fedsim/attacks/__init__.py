"""Backdoor attacks. Every concrete class is imported here so ``class_path`` short names such as
``fedsim.attacks.BadNets`` resolve."""

from fedsim.attacks.attack import Attack
from fedsim.attacks.backdoor import DBA, BadNets, Blended
from fedsim.attacks.base import AttackContext, ClientContext, DataPoison, ModelPoison
from fedsim.attacks.model import PGD, Neurotoxin, Scaling
from fedsim.attacks.poison import EdgeCase, LabelFlip, TargetedPoison
from fedsim.attacks.schedule import Schedule, fraction_count

__all__ = [
    "Attack",
    "AttackContext",
    "BadNets",
    "Blended",
    "ClientContext",
    "DBA",
    "DataPoison",
    "EdgeCase",
    "LabelFlip",
    "ModelPoison",
    "Neurotoxin",
    "PGD",
    "Scaling",
    "Schedule",
    "TargetedPoison",
    "fraction_count",
]
