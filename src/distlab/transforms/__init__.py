"""The update seam: what happens to an update between a worker or client and the exchange.

Every strategy hands the updates it sends to a `Chain` (chain.py) built from the run's
`compress` config: the chain encodes them into the bytes that travel through the
Communicator and decodes them on the receiving side, with error feedback where asked. Each
compressor is one module; `COMPRESSORS` names them all (the config checks names against
config_sections.COMPRESSORS without loading torch).
"""

from __future__ import annotations

import importlib

from distlab.transforms.base import Compressor

# name -> "module:class", imported when a run uses it
COMPRESSORS: dict[str, str] = {
    "fp16": "distlab.transforms.cast:Fp16",
    "bf16": "distlab.transforms.cast:Bf16",
    "topk": "distlab.transforms.topk:TopK",
    "randk": "distlab.transforms.randk:RandK",
    "qsgd": "distlab.transforms.qsgd:Qsgd",
    "sign": "distlab.transforms.sign:ScaledSign",
    "majority": "distlab.transforms.sign:MajorityVote",
    "powersgd": "distlab.transforms.powersgd:PowerSgd",
}


def compressor_class(name: str) -> type[Compressor]:
    """The class of compressor `name`; ValueError naming the allowed ones."""
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r} (allowed: {', '.join(COMPRESSORS)})")
    module, _, attr = COMPRESSORS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
