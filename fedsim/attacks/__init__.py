"""Backdoor attacks. Every concrete class is imported here so ``class_path`` short names such as
``fedsim.attacks.BadNets`` resolve."""

from fedsim.attacks.a3fl import A3FL
from fedsim.attacks.attack import Attack
from fedsim.attacks.backdoor import DBA, BadNets, Blended
from fedsim.attacks.base import AttackContext, ClientContext, DataPoison, ModelPoison
from fedsim.attacks.camouflage import ActivationCamouflage
from fedsim.attacks.dormancy import DormancyAware
from fedsim.attacks.model import PGD, Neurotoxin, Scaling
from fedsim.attacks.poison import EdgeCase, LabelFlip, TargetedPoison
from fedsim.attacks.ratio import RatioAware
from fedsim.attacks.schedule import Schedule, fraction_count

__all__ = [
    "A3FL",
    "ActivationCamouflage",
    "Attack",
    "AttackContext",
    "BadNets",
    "Blended",
    "ClientContext",
    "DBA",
    "DataPoison",
    "DormancyAware",
    "EdgeCase",
    "LabelFlip",
    "ModelPoison",
    "Neurotoxin",
    "PGD",
    "RatioAware",
    "Scaling",
    "Schedule",
    "TargetedPoison",
    "fraction_count",
]
