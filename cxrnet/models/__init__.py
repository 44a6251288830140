"""Networks (plain ``torch.nn``; no Lightning here)."""

from cxrnet.models.cxrnet import MAP_NAMES, CXRNet, CXRNetOutput, Heads, create_model, pad_to_multiple
from cxrnet.models.encoders import build_encoder, list_decoders, list_encoders

__all__ = [
    "MAP_NAMES",
    "CXRNet",
    "CXRNetOutput",
    "Heads",
    "build_encoder",
    "create_model",
    "list_decoders",
    "list_encoders",
    "pad_to_multiple",
]
