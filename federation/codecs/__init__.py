"""Codecs of what travels between server and sites, registered by name (``--compression``).

One module each: ``none`` (float32, as before), ``fp16`` (range checked, falls back to
float32 per tensor), ``bf16`` (torch's bfloat16 as uint16 bit patterns) and ``int8``
(per-tensor quantisation of a site's change, with error feedback at the site). Only numpy
(and torch for bf16): the message-level part is :mod:`federation.compression`.
"""

from __future__ import annotations

from federation.codecs.base import FLOAT as FLOAT32
from federation.codecs.base import RAW_SUFFIX, SCALE_SUFFIX, Codec, Encoded, PayloadError
from federation.codecs.bf16 import Bf16
from federation.codecs.feedback import encode_with_feedback, residual_fits
from federation.codecs.fp16 import Fp16
from federation.codecs.int8 import Int8
from federation.codecs.none import NoCompression
from umedpt.registry import Registry

__all__ = [
    "CODECS",
    "FLOAT32",
    "RAW_SUFFIX",
    "SCALE_SUFFIX",
    "Codec",
    "Encoded",
    "PayloadError",
    "codec_names",
    "create_codec",
    "encode_with_feedback",
    "register_codec",
    "residual_fits",
]

CODECS: Registry[type[Codec]] = Registry("codec")


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Make ``cls`` available under ``cls.name`` (``--compression``)."""
    return CODECS.register(cls.name, cls)


def create_codec(name: str) -> Codec:
    """The codec called ``name``; RegistryError listing the valid names otherwise."""
    return CODECS.get(name)()


def codec_names() -> tuple[str, ...]:
    return CODECS.names()


for _codec in (NoCompression, Fp16, Bf16, Int8):
    register_codec(_codec)
