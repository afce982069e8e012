"""Agent definitions: the YAML a team writes, validated into an immutable ``AgentSpec``.

Pure domain: no I/O except reading and writing back the definition file in
:func:`load_agent_file`.
"""

from __future__ import annotations

import re
import uuid
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from copydesk.errors import AgentDefinitionInvalid
from copydesk.prompts import check_template

InputType = Literal["text", "dropdown", "file", "media"]
UploadType = Literal["url", "file_id"]
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextOptions(_Strict):
    min_fields: int = Field(default=1, ge=0)
    max_fields: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _order(self) -> TextOptions:
        if self.min_fields > self.max_fields:
            raise ValueError("min_fields must not exceed max_fields")
        return self


class DropdownOptions(_Strict):
    list: Annotated[list[str], Field(min_length=1)]


class FileOptions(_Strict):
    max_files: int = Field(default=1, ge=1)
    file_types: list[str] = Field(
        default_factory=lambda: ["pdf", "docx", "txt", "csv", "html", "pptx", "xlsx", "eml"]
    )
    max_word_count: int = Field(default=20000, ge=1)
    max_file_size_mb: int = Field(default=10, ge=1)
    upload_types: list[UploadType] = Field(default_factory=lambda: list[UploadType](["file_id"]))


class MediaOptions(_Strict):
    file_types: list[str] = Field(default_factory=lambda: ["jpg", "png"])
    max_image_size_mb: int = Field(default=5, ge=1)


Options = TextOptions | DropdownOptions | FileOptions | MediaOptions
_OPTIONS_BY_TYPE: dict[str, type[_Strict]] = {
    "text": TextOptions,
    "dropdown": DropdownOptions,
    "file": FileOptions,
    "media": MediaOptions,
}


class InputSpec(_Strict):
    """One typed input, with Writer's input types and options (every option filled in)."""

    name: str
    input_type: InputType
    required: bool = True
    description: str | None = None
    options: Options | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"input name {value!r} must start with a letter or _ and contain only "
                "letters, digits and _ (templates refer to it by this name)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _options_for_type(cls, data: Any) -> Any:
        # Options are not tagged on the wire: the shape follows input_type. Parse them with
        # the right model and fill every field, since strict SDK clients reject partial ones.
        if isinstance(data, dict) and data.get("input_type") in _OPTIONS_BY_TYPE:
            model = _OPTIONS_BY_TYPE[data["input_type"]]
            raw = data.get("options")
            if raw is None and data["input_type"] == "dropdown":
                return data  # reported below as a missing list
            if raw is None:
                data = {**data, "options": model.model_validate({})}
        return data

    @field_validator("options", mode="before")
    @classmethod
    def _options_model(cls, value: Any, info: ValidationInfo) -> Any:
        # Parsed here rather than above so that errors keep their path (inputs.N.options.x).
        model = _OPTIONS_BY_TYPE.get(info.data.get("input_type", ""))
        if model is not None and isinstance(value, dict):
            return model.model_validate(value)
        return value

    @model_validator(mode="after")
    def _dropdown_needs_list(self) -> InputSpec:
        if self.input_type == "dropdown" and not isinstance(self.options, DropdownOptions):
            raise ValueError("a dropdown input needs options.list with at least one value")
        return self

    @property
    def max_values(self) -> int:
        match self.options:
            case TextOptions(max_fields=n):
                return n
            case FileOptions(max_files=n):
                return n
            case _:
                return 1

    @property
    def min_values(self) -> int:
        if isinstance(self.options, TextOptions):
            return max(self.options.min_fields, 1 if self.required else 0)
        return 1 if self.required else 0

    @property
    def is_list(self) -> bool:
        """Rendered into the prompt as a list (it can take several values) or a string."""
        return self.max_values > 1


class ModelRef(_Strict):
    provider: str | None = Field(default=None, description="configured provider name")
    name: str | None = Field(default=None, description="model name; provider's default if empty")


class GenerationParams(_Strict):
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=1, le=32768)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)
    system: str | None = Field(default=None, description="optional system message")


class OutputSpec(_Strict):
    title: str = "Output"


class AgentSpec(_Strict):
    """A validated agent definition; one deploy of it is one immutable version."""

    id: str | None = None
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    inputs: list[InputSpec] = Field(default_factory=list)
    prompt: str = Field(min_length=1)
    output: OutputSpec = Field(default_factory=OutputSpec)
    model: ModelRef = Field(default_factory=ModelRef)
    parameters: GenerationParams = Field(default_factory=GenerationParams)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = str(value)
        if not value or value == "jobs" or "/" in value or len(value) > 100:
            raise ValueError(
                "id must be a non-empty string of at most 100 characters without '/', "
                "and not 'jobs' (reserved by the jobs routes); a UUID is best"
            )
        return value

    @model_validator(mode="after")
    def _unique_inputs(self) -> AgentSpec:
        seen: set[str] = set()
        for spec in self.inputs:
            if spec.name in seen:
                raise ValueError(
                    f"field 'inputs': input name {spec.name!r} is used twice; "
                    "rename one of them (names must be unique)"
                )
            seen.add(spec.name)
        return self

    @cached_property
    def has_files(self) -> bool:
        """Whether any input takes files or images."""
        return any(i.input_type in ("file", "media") for i in self.inputs)

    @cached_property
    def _inputs_by_name(self) -> dict[str, InputSpec]:
        return {spec.name: spec for spec in self.inputs}

    def input(self, name: str) -> InputSpec | None:
        return self._inputs_by_name.get(name)

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _describe(error: Any) -> str:
    loc = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"field '{loc}' is required: add it"
    if error["type"] == "extra_forbidden":
        return f"field '{loc}' is not a known field: remove it or check its spelling"
    if error["type"] == "literal_error":
        return f"field '{loc}': {message}"
    return f"field '{loc}': {message}" if loc else message


def parse_agent(document: Any, source: str) -> AgentSpec:
    """Validate a parsed YAML/JSON document; errors name the source, the field and the fix."""
    if not isinstance(document, dict):
        raise AgentDefinitionInvalid(source, ["the file must hold a mapping (name:, prompt:, ...)"])
    try:
        spec = AgentSpec.model_validate(document)
    except ValidationError as exc:
        problems = list(dict.fromkeys(_describe(err) for err in exc.errors()))
        raise AgentDefinitionInvalid(source, problems) from exc
    template_problems = check_template(spec)
    if template_problems:
        raise AgentDefinitionInvalid(source, template_problems)
    return spec


def load_agent_file(path: Path, *, write_back_id: bool = True) -> AgentSpec:
    """Read and validate one agent file; give it a stable UUID (written back) if it has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AgentDefinitionInvalid(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AgentDefinitionInvalid(str(path), [f"not valid YAML: {exc}"]) from exc
    spec = parse_agent(document, str(path))
    if spec.id is None:
        new_id = str(uuid.uuid4())
        spec = spec.model_copy(update={"id": new_id})
        if write_back_id:
            path.write_text(_with_id(text, new_id), encoding="utf-8")
    return spec


_BLANK_ID_RE = re.compile(r"^id:[ \t]*(?:null|Null|NULL|~)?[ \t]*(?:#.*)?\r?$", re.MULTILINE)
_DOCUMENT_START_RE = re.compile(r"^---[ \t]*(?:#.*)?$", re.MULTILINE)


def _with_id(text: str, new_id: str) -> str:
    """``text`` with ``id: new_id`` as its top-level id, keeping the rest as written."""
    line = f"id: {new_id}"
    # An empty `id:` key is filled in: a second `id` key would win over the one we add.
    if _BLANK_ID_RE.search(text):
        return _BLANK_ID_RE.sub(line, text, count=1)
    # After a `---` start marker (and any directives before it), not ahead of them.
    start = _DOCUMENT_START_RE.search(text)
    if start is not None:
        return f"{text[: start.end()]}\n{line}{text[start.end() :]}"
    return f"{line}\n{text}"


def agent_files(paths: list[Path]) -> list[Path]:
    """Expand folders into their *.yaml / *.yml files, sorted; keep files as given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"}))
        else:
            found.append(path)
    return found
