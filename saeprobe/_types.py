"""Small shared types: token modality labels and data items."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Modality(IntEnum):
    """Per-token modality label, stored as ``int8`` in activation stores.

    ``TEMPLATE`` covers chat-template and instruction tokens, ``SYSTEM`` the
    leading system-prompt tokens (masked out of the paper's SAE training data),
    ``TEXT`` the tokens of the item's own text and ``IMAGE`` image tokens.
    """

    TEMPLATE = 0
    TEXT = 1
    IMAGE = 2
    SYSTEM = 3

    @classmethod
    def names(cls) -> dict[int, str]:
        return {int(m): m.name.lower() for m in cls}


@dataclass
class Item:
    """One input: a text, an image, or both.

    Attributes
    ----------
    id : str
        Stable identifier (used as the sample id in stores and qrels).
    text : str | None
        Raw text (a caption, a query); the prompt template is added by adapters.
    image : PIL.Image.Image | None
        Decoded RGB image.
    prompt : str | None
        Name of a prompt template in :data:`saeprobe.models.prompts.PROMPTS`;
        ``None`` picks one from the item's content (text, image, or image_text).
    meta : dict
        Free-form metadata (source row, caption index, ...).
    """

    id: str
    text: str | None = None
    image: Any = None
    prompt: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.image is not None and self.text:
            return "image_text"
        if self.image is not None:
            return "image"
        if self.text:
            return "text"
        raise ValueError(f"item {self.id!r} has neither text nor image")
