"""File and media inputs: checking their values against the agent's options, and turning
them into prompt text and image parts.

A ``file`` input takes file ids of the caller's organisation, or URLs where the agent's
``upload_types`` allow ``url``. A ``media`` input takes image file ids. Checks that need
only metadata run when a call or job is accepted (:meth:`Attachments.check`); reading the
text (waiting for a file still being processed), fetching URLs and reading image bytes
happen when the call runs (:meth:`Attachments.resolve`).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from copydesk import extraction
from copydesk.agents import AgentSpec, FileOptions, InputSpec, MediaOptions
from copydesk.blobs import BlobNotFound, BlobStore
from copydesk.errors import InvalidInputs, Problem
from copydesk.extraction import ExtractionFailed
from copydesk.fetching import FetchFailed, UrlFetcher, looks_like_url
from copydesk.library import IMAGES, MIME_TYPES, extension_of
from copydesk.store import FileStore, StoredFile

MB = 1024 * 1024
_EXT_BY_MIME = {mime: ext for ext, mime in reversed(MIME_TYPES.items())}


class FileText(str):
    """A document's text as a template sees it: renders as the text, and also carries
    ``.name``, ``.word_count`` and ``.source`` (the file id or URL)."""

    name: str
    word_count: int
    source: str

    def __new__(cls, text: str, name: str, word_count: int, source: str) -> FileText:
        value = super().__new__(cls, text)
        value.name = name
        value.word_count = word_count
        value.source = source
        return value


@dataclass(frozen=True)
class Image:
    name: str
    mime_type: str
    data: bytes

    def data_url(self) -> str:
        return f"data:{self.mime_type};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass
class Resolved:
    """What the file and media inputs of one call became."""

    texts: dict[str, list[str]] = field(default_factory=dict)  # input name -> values
    images: list[Image] = field(default_factory=list)


def _problem(spec: InputSpec, value: str, why: str, rule: str) -> Problem:
    return Problem(f"input '{spec.name}': {value!r} {why}", rule, input=spec.name)


class Attachments:
    def __init__(
        self,
        files: FileStore,
        blobs: BlobStore,
        fetcher: UrlFetcher,
        *,
        wait_s: float,
        poll_s: float = 0.2,
        extract: Callable[[bytes, str], extraction.Extracted] = extraction.extract,
    ) -> None:
        self._files = files
        self._blobs = blobs
        self._fetcher = fetcher
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._extract = extract

    # --- acceptance ---------------------------------------------------------------

    async def check(
        self, org_id: str, agent: AgentSpec, values: dict[str, list[str]], *, images_ok: bool
    ) -> list[Problem]:
        """Problems with the file and media values (no bytes are read)."""
        problems: list[Problem] = []
        for spec in agent.inputs:
            given = values.get(spec.name)
            if not given or spec.input_type not in ("file", "media"):
                continue
            for value in given:
                problems.extend(await self._check_value(org_id, spec, value, images_ok))
        return problems

    async def _check_value(
        self, org_id: str, spec: InputSpec, value: str, images_ok: bool
    ) -> list[Problem]:
        options = spec.options
        if isinstance(options, FileOptions) and looks_like_url(value):
            if "url" not in options.upload_types:
                return [
                    _problem(
                        spec,
                        value,
                        "is a URL, but this input takes only uploaded file ids "
                        f"(upload_types: {', '.join(options.upload_types)})",
                        "upload_types",
                    )
                ]
            reason = self._fetcher.refusal(value)
            return [_problem(spec, value, reason, "url")] if reason else []
        if isinstance(options, FileOptions) and "file_id" not in options.upload_types:
            return [
                _problem(
                    spec, value, "is not a URL, and this input takes only URLs", "upload_types"
                )
            ]
        found = await self._files.get_file(org_id, value)
        if found is None:
            return [_problem(spec, value, "is not a file of this organisation", "file_not_found")]
        return _check_file(spec, found, images_ok)

    # --- running ------------------------------------------------------------------

    async def resolve(
        self, org_id: str, agent: AgentSpec, values: dict[str, list[str]]
    ) -> Resolved:
        """Text and images for the file and media inputs; waits (up to ``wait_s``) for
        files still being processed. Raises InvalidInputs when one cannot be used."""
        resolved = Resolved()
        for spec in agent.inputs:
            given = values.get(spec.name)
            if not given or spec.input_type not in ("file", "media"):
                continue
            texts: list[str] = []
            for value in given:
                item = await self._resolve_value(org_id, spec, value)
                if isinstance(item, Image):
                    resolved.images.append(item)
                    texts.append(FileText(f"[image: {item.name}]", item.name, 0, value))
                else:
                    texts.append(item)
            resolved.texts[spec.name] = texts
        return resolved

    async def _resolve_value(self, org_id: str, spec: InputSpec, value: str) -> FileText | Image:
        if isinstance(spec.options, FileOptions) and looks_like_url(value):
            return await self._fetch(spec, spec.options, value)
        file = await self._ready(org_id, spec, value)
        problems = _check_file(spec, file, images_ok=True)
        if problems:
            raise InvalidInputs(problems)
        if file.extension in IMAGES:
            try:
                data = await self._blobs.read(file.storage_key)
            except BlobNotFound:
                raise InvalidInputs(
                    [_problem(spec, value, "has no stored bytes any more", "file_not_found")]
                ) from None
            return Image(file.name, file.mime_type, data)
        return FileText(file.text or "", file.name, file.word_count or 0, value)

    async def _ready(self, org_id: str, spec: InputSpec, file_id: str) -> StoredFile:
        """The file once it is no longer ``in_progress``."""
        deadline = time.monotonic() + self._wait_s
        delay = self._poll_s
        while True:
            found = await self._files.get_file(org_id, file_id)
            if found is None:
                raise InvalidInputs(
                    [
                        _problem(
                            spec, file_id, "is not a file of this organisation", "file_not_found"
                        )
                    ]
                )
            if found.status != "in_progress":
                return found
            if time.monotonic() >= deadline:
                raise InvalidInputs(
                    [
                        _problem(
                            spec,
                            file_id,
                            f"is still being processed after {self._wait_s:g}s; "
                            "try again when its status is 'completed'",
                            "file_in_progress",
                        )
                    ]
                )
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)

    async def _fetch(self, spec: InputSpec, options: FileOptions, url: str) -> FileText:
        try:
            fetched = await self._fetcher.fetch(url, options.max_file_size_mb * MB)
        except FetchFailed as exc:
            raise InvalidInputs(
                [_problem(spec, url, f"could not be fetched: {exc}", "url")]
            ) from None
        ext = _EXT_BY_MIME.get(fetched.content_type) or extension_of(fetched.filename)
        if ext not in MIME_TYPES or ext in IMAGES:
            shown = fetched.content_type or "no Content-Type"
            raise InvalidInputs(
                [_problem(spec, url, f"is not a supported document ({shown})", "file_types")]
            )
        if ext not in _allowed_types(options.file_types):
            raise InvalidInputs([_types_problem(spec, url, ext, options.file_types)])
        try:
            extracted = await asyncio.to_thread(self._extract, fetched.data, ext)
        except ExtractionFailed as exc:
            raise InvalidInputs(
                [_problem(spec, url, f"could not be read as .{ext}: {exc.reason}", "url")]
            ) from None
        if extracted.word_count > options.max_word_count:
            raise InvalidInputs(
                [_words_problem(spec, url, extracted.word_count, options.max_word_count)]
            )
        name = fetched.filename or url
        return FileText(extracted.text, name, extracted.word_count, url)


def _allowed_types(file_types: list[str]) -> set[str]:
    allowed = {t.strip().lstrip(".").lower() for t in file_types}
    if "jpg" in allowed or "jpeg" in allowed:
        allowed |= {"jpg", "jpeg"}
    if "html" in allowed or "htm" in allowed:
        allowed |= {"html", "htm"}
    return allowed


def _types_problem(spec: InputSpec, value: str, ext: str, file_types: list[str]) -> Problem:
    return _problem(
        spec,
        value,
        f"is a .{ext} file; this input takes {', '.join(file_types)}",
        "file_types",
    )


def _words_problem(spec: InputSpec, value: str, words: int, limit: int) -> Problem:
    return _problem(
        spec, value, f"has {words} words; this input takes at most {limit}", "max_word_count"
    )


def _check_file(spec: InputSpec, file: StoredFile, images_ok: bool) -> list[Problem]:
    """The agent's options checked against a stored file's metadata."""
    value = file.id
    options = spec.options
    if isinstance(options, MediaOptions):
        if file.extension not in IMAGES:
            return [_problem(spec, value, f"is not an image ({file.name})", "file_types")]
        if file.extension not in _allowed_types(options.file_types):
            return [_types_problem(spec, value, file.extension, options.file_types)]
        if file.size_bytes > options.max_image_size_mb * MB:
            return [
                _problem(
                    spec,
                    value,
                    f"is {file.size_bytes} bytes; this input takes images of at most "
                    f"{options.max_image_size_mb} MB",
                    "max_image_size_mb",
                )
            ]
    elif isinstance(options, FileOptions):
        if file.extension not in _allowed_types(options.file_types):
            return [_types_problem(spec, value, file.extension, options.file_types)]
        if file.size_bytes > options.max_file_size_mb * MB:
            return [
                _problem(
                    spec,
                    value,
                    f"is {file.size_bytes} bytes; this input takes files of at most "
                    f"{options.max_file_size_mb} MB",
                    "max_file_size_mb",
                )
            ]
        if file.word_count is not None and file.word_count > options.max_word_count:
            return [_words_problem(spec, value, file.word_count, options.max_word_count)]
    if file.status == "failed":
        why = f"could not be processed: {file.error}" if file.error else "failed processing"
        return [_problem(spec, value, why, "file_failed")]
    if file.extension in IMAGES and not images_ok:
        return [
            _problem(
                spec,
                value,
                "is an image, and this agent's provider cannot take images "
                "(use a provider whose model accepts images, e.g. kind 'openai' with "
                "options.images: true)",
                "provider_images",
            )
        ]
    return []
