"""Request and response bodies of the admin and persona routes (pydantic), and nothing else."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FileInfo(BaseModel):
    name: str
    size: int
    sha256: str


class VersionInfo(BaseModel):
    version: int
    created: int
    kind: Literal["adapter", "prompt"]
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = Field(default_factory=list)
    base_model: str | None = None
    files: list[FileInfo] = Field(default_factory=list)


class Residency(BaseModel):
    device_slot: int | None = None
    host: bool = False
    merged: bool = False  # folded into the base layers now (merged mode)
    pinned: bool = False  # an admin asked for it to be merged whenever the batch is its own


class AdapterInfo(VersionInfo):
    """One version (the current one, or the one an upload just published) with its persona."""

    id: str
    object: Literal["adapter"] = "adapter"
    name: str
    current_version: int
    versions: list[VersionInfo]
    persona: dict[str, Any]
    resident: Residency


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterInfo]
    quarantined: dict[str, str] = Field(
        default_factory=dict, description="`name@version` -> why: stored versions that cannot "
        "be served (left out of `data`; DELETE the name or upload a new version)")


class Deleted(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    deleted: bool = True
    versions: list[int]


class PersonaInfo(BaseModel):
    id: str
    object: Literal["persona"] = "persona"
    version: int
    display_name: str
    description: str
    greeting: str
    tags: list[str]
    system_prompt: str
    example_messages: list[dict[str, str]]
    sampling: dict[str, float]
    post_history_instructions: str = ""
    adapter: str | None = None
    avatar: str | None = None


class PersonaList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PersonaInfo]


class CardImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    card: dict[str, Any] | None = Field(default=None, description="A SillyTavern Character "
                                        "Card V2 object (a V1 card's flat fields are read too)")
    card_file: str | None = Field(default=None, description="Instead of `card`: base64 of a "
                                  "card file, a SillyTavern PNG card (its `chara` or `ccv3` "
                                  "text chunk) or a JSON card, at most 16 MB")
    name: str | None = Field(default=None, max_length=64)
    adapter: str | None = Field(default=None, max_length=64)
    replace: bool = Field(default=False, description="Publish a new version of an existing "
                          "persona of this name (else 409)")
