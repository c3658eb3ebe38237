"""The CAPro network: backbones, heads, momentum key encoder, queue and prototypes."""

from capro.model.backbones import create_backbone
from capro.model.capro import CAPro, StepFlags, StepOutput

__all__ = ["CAPro", "StepFlags", "StepOutput", "create_backbone"]
