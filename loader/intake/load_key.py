"""Load keys (`partner_id/shop_id/load_id`) and the folder paths they come from.

Every part is checked before it is used in a path, a schema or a query: 1-64
characters of [A-Za-z0-9._-], not starting with a dot.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
PART_RULE = "1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-', not starting with '.'"


class LoadKeyError(ValueError):
    """A load key or folder path that is refused before anything is read."""


def check_part(kind: str, value: str) -> str:
    if not PART.fullmatch(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise LoadKeyError(f"{kind} {shown!r} is not allowed: use {PART_RULE}")
    return value


class LoadKey(BaseModel):
    model_config = ConfigDict(frozen=True)

    partner_id: str
    shop_id: str
    load_id: str

    @classmethod
    def of(cls, partner_id: str, shop_id: str, load_id: str) -> LoadKey:
        return cls(
            partner_id=check_part("partner_id", partner_id),
            shop_id=check_part("shop_id", shop_id),
            load_id=check_part("load_id", load_id),
        )

    @classmethod
    def parse(cls, text: str) -> LoadKey:
        """Parse `partner_id/shop_id/load_id` as typed on a command line."""
        parts = text.split("/")
        if len(parts) != 3:
            raise LoadKeyError(f"load {text!r} must be partner_id/shop_id/load_id")
        return cls.of(*parts)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> LoadKey:
        """The key of a load folder `.../{partner_id}/{shop_id}/{load_id}/`.

        The parts are taken from the path as written, so `acme/../x` is refused
        rather than normalised away; only a path too short to hold three parts
        is made absolute first (for `loader run .` inside a load folder).
        """
        text = os.fspath(folder).rstrip("/") or "/"
        parts = text.split("/")
        if len(parts) < 3 or any(p in ("", ".") for p in parts[-3:]):
            parts = os.path.abspath(text).split("/")
        if len(parts) < 4:
            raise LoadKeyError(f"{text!r} is not a load folder: expected .../partner_id/shop_id/load_id/")
        return cls.of(parts[-3], parts[-2], parts[-1])

    def __str__(self) -> str:
        return f"{self.partner_id}/{self.shop_id}/{self.load_id}"

    def folder_under(self, root: Path) -> Path:
        return root / self.partner_id / self.shop_id / self.load_id
