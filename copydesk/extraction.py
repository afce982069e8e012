"""Plain-text extraction for uploaded documents.

Pure and synchronous: ``extract(data, extension)`` takes the file's bytes and returns its
text with normalised whitespace and a word count. Every failure, whatever library saw it,
surfaces as :class:`ExtractionFailed` with a reason a person understands.

Vendor libraries are imported inside the function that needs them, so importing this module
stays cheap. Output is capped at ``max_chars``; readers stop pulling text once the cap is
reached, and Office archives whose declared unpacked size is absurd are refused before any
library opens them (zip bombs).
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any

from copydesk.errors import CopydeskError

DEFAULT_MAX_CHARS = 2_000_000

# Office files are zip archives; refuse any whose members claim to unpack to more than this.
# zipfile never yields more than a member's declared size, so the declared sizes bound the
# work the vendor libraries can be made to do.
MAX_UNPACKED_BYTES = 512 * 1024 * 1024

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


@dataclass(frozen=True)
class Extracted:
    text: str
    word_count: int


class ExtractionFailed(CopydeskError):
    """The file could not be turned into text; ``reason`` says why, in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- whitespace -------------------------------------------------------------------------

_INLINE_SPACE = re.compile(r"[^\S\n]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f\u200b\ufeff]")
_MANY_BREAKS = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces/tabs, trim lines, keep paragraph breaks (at most one blank line)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = [_INLINE_SPACE.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_BREAKS.sub("\n\n", "\n".join(lines)).strip()


class _Sink:
    """Collects text pieces until ``limit`` characters; ``add`` returns False once full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    @property
    def full(self) -> bool:
        return self.size >= self.limit

    def add(self, piece: str) -> bool:
        if self.full:
            return False
        piece = normalize_whitespace(piece)
        if piece:
            self.parts.append(piece)
            self.size += len(piece) + 2
        return not self.full

    def text(self, separator: str = "\n\n") -> str:
        return separator.join(self.parts)


# --- plain text ----------------------------------------------------------------------------


def decode_text(data: bytes, max_chars: int | None = None) -> str:
    """Decode bytes of unknown charset: BOM first, then UTF-8, then cp1252, then Latin-1.

    With ``max_chars`` only enough bytes for that many characters are decoded.
    """
    if data.startswith(codecs.BOM_UTF8):
        encodings: tuple[str, ...] = ("utf-8-sig",)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encodings = ("utf-16",)
    else:
        encodings = ("utf-8", "cp1252", "latin-1")
    # No character takes more than 4 bytes in any of these encodings (+4 for a BOM).
    chunk = data if max_chars is None else data[: max_chars * 4 + 4]
    final = len(chunk) == len(data)
    for encoding in encodings:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        try:
            text = decoder.decode(chunk, final=final)
        except UnicodeDecodeError:
            continue
        return text if max_chars is None else text[:max_chars]
    # Only reachable for a BOM'd file with invalid content: keep what can be read.
    text = chunk.decode(encodings[0], errors="replace")
    return text if max_chars is None else text[:max_chars]


def _extract_text(data: bytes, max_chars: int) -> str:
    return decode_text(data, max_chars)


def _extract_csv(data: bytes, max_chars: int) -> str:
    sink = _Sink(max_chars)
    reader = csv.reader(io.StringIO(decode_text(data, max_chars), newline=""))
    try:
        for row in reader:
            line = ", ".join(cell.strip() for cell in row if cell.strip())
            if line and not sink.add(line):
                break
    except csv.Error as exc:
        raise ExtractionFailed(f"not a valid CSV file (line {reader.line_num}: {exc})") from exc
    return sink.text("\n")


# --- HTML ------------------------------------------------------------------------------------

_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "head"})
_KEEP_IN_HEAD = frozenset({"title"})
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details",
        "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
        "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "html", "legend", "li", "main",
        "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "tfoot", "thead",
        "title", "tr", "ul",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})


class _HTMLText(HTMLParser):
    def __init__(self, sink: _Sink) -> None:
        super().__init__(convert_charrefs=True)
        self.sink = sink
        self.skip_depth = 0
        self.in_title = False
        self.buffer: list[str] = []

    def _flush(self) -> None:
        if self.buffer:
            self.sink.add("".join(self.buffer))
            self.buffer = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _KEEP_IN_HEAD:
            self.in_title = True
        elif tag in _SKIP_TAGS:
            self.skip_depth += 1
            return
        if tag == "br":
            self.buffer.append("\n")
        elif tag in _BLOCK_TAGS:
            self._flush()
        elif tag in _CELL_TAGS:
            self.buffer.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.buffer.append("\n")
        elif tag in _BLOCK_TAGS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _KEEP_IN_HEAD:
            self.in_title = False
            self._flush()
        elif tag in _SKIP_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self._flush()
        elif tag in _CELL_TAGS:
            self.buffer.append(" ")

    def handle_data(self, data: str) -> None:
        if (self.skip_depth == 0 or self.in_title) and not self.sink.full:
            self.buffer.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def html_to_text(html: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Visible text of an HTML document: scripts and styles dropped, blocks on their own lines."""
    sink = _Sink(max_chars)
    parser = _HTMLText(sink)
    # Feed in slices so a huge page stops being parsed once the cap is reached.
    step = 64 * 1024
    for start in range(0, len(html), step):
        parser.feed(html[start : start + step])
        if sink.full:
            break
    parser.close()
    return sink.text()


def _extract_html(data: bytes, max_chars: int) -> str:
    # Markup is a multiple of the visible text; decode generously but not unboundedly.
    return html_to_text(decode_text(data, max_chars * 8), max_chars)


# --- PDF -------------------------------------------------------------------------------------


def _extract_pdf(data: bytes, max_chars: int) -> str:
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    if b"%PDF-" not in data[:1024]:
        raise ExtractionFailed("not a valid PDF file (no %PDF header)")
    try:
        reader = PdfReader(io.BytesIO(data))
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ExtractionFailed(f"not a valid PDF file ({_short(exc)})") from exc
    if reader.is_encrypted:
        # Many PDFs carry only an owner password (print/copy restrictions) and open with "".
        try:
            opened = reader.decrypt("")
        except (DependencyError, NotImplementedError, PdfReadError) as exc:
            raise ExtractionFailed(
                f"the PDF is encrypted and cannot be opened ({_short(exc)})"
            ) from exc
        if opened == PasswordType.NOT_DECRYPTED:
            raise ExtractionFailed("the PDF is encrypted (a password is needed to open it)")
    sink = _Sink(max_chars)
    try:
        for page in reader.pages:
            if not sink.add(page.extract_text() or ""):
                break
    except FileNotDecryptedError as exc:
        raise ExtractionFailed("the PDF is encrypted (a password is needed to open it)") from exc
    return sink.text()


# --- Office (zip) formats ------------------------------------------------------------------


def _open_office(data: bytes, kind: str) -> None:
    """Refuse what is not a sane zip archive before a vendor library reads it."""
    if data.startswith(_OLE_MAGIC):
        raise ExtractionFailed(
            f"not a readable {kind} file: it is password-protected or in the old binary "
            f"Office format (save it as .{kind.lower()} without a password)"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise ExtractionFailed(f"not a valid {kind} file (zip archive expected)") from exc
    if unpacked > MAX_UNPACKED_BYTES:
        raise ExtractionFailed(
            f"the {kind} file unpacks to {unpacked // (1024 * 1024)} MiB, over the "
            f"{MAX_UNPACKED_BYTES // (1024 * 1024)} MiB limit"
        )


def _extract_docx(data: bytes, max_chars: int) -> str:
    _open_office(data, "DOCX")
    import docx
    from docx.table import Table

    document = docx.Document(io.BytesIO(data))
    sink = _Sink(max_chars)
    for block in document.iter_inner_content():
        lines = _table_lines(block) if isinstance(block, Table) else [block.text]
        for line in lines:
            if not sink.add(line):
                return sink.text()
    return sink.text()


def _table_lines(table: Any) -> Iterator[str]:
    """One line per table row, cells joined with " | "; merged cells appear once."""
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = " ".join(cell.text.split())
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        if cells:
            yield " | ".join(cells)


def _extract_pptx(data: bytes, max_chars: int) -> str:
    _open_office(data, "PPTX")
    import pptx

    presentation = pptx.Presentation(io.BytesIO(data))
    sink = _Sink(max_chars)
    for slide in presentation.slides:
        for piece in _shape_texts(slide.shapes):
            if not sink.add(piece):
                return sink.text()
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and not sink.add(notes.text):
                return sink.text()
    return sink.text()


def _shape_texts(shapes: Iterable[Any]) -> Iterator[str]:
    for shape in shapes:
        if getattr(shape, "shapes", None) is not None:  # a group
            yield from _shape_texts(shape.shapes)
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            yield shape.text_frame.text
        elif getattr(shape, "has_table", False) and shape.has_table:
            yield "\n".join(_table_lines(shape.table))


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, datetime | date | time):
        text = value.isoformat()
        return text.removesuffix("T00:00:00")
    return str(value).strip()


def _extract_xlsx(data: bytes, max_chars: int) -> str:
    _open_office(data, "XLSX")
    import openpyxl

    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sink = _Sink(max_chars)
        for sheet in workbook.worksheets:
            if not sink.add(f"Sheet: {sheet.title}"):
                break
            for row in sheet.iter_rows(values_only=True):
                line = ", ".join(text for text in map(_cell_text, row) if text)
                if line and not sink.add(line):
                    return _join_sheets(sink)
        return _join_sheets(sink)
    finally:
        workbook.close()


def _join_sheets(sink: _Sink) -> str:
    # Rows on consecutive lines; a blank line before each sheet heading.
    return "\n".join(sink.parts).replace("\nSheet: ", "\n\nSheet: ")


# --- e-mail ---------------------------------------------------------------------------------


def _extract_eml(data: bytes, max_chars: int) -> str:
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    if not message.keys():
        raise ExtractionFailed("not a valid e-mail message (no headers)")
    sink = _Sink(max_chars)
    for name in ("From", "To", "Cc", "Subject", "Date"):
        value = message.get(name)
        if value:
            sink.add(f"{name}: {value}")
    header = "\n".join(sink.parts)
    sink.parts = []

    body = message.get_body(preferencelist=("plain",))
    if body is not None:
        sink.add(_part_text(body, max_chars))
    else:
        body = message.get_body(preferencelist=("html",))
        if body is not None:
            sink.add(html_to_text(_part_text(body, max_chars * 8), max_chars))
    names = [
        part.get_filename() or part.get_content_type()
        for part in message.iter_attachments()
        if isinstance(part, EmailMessage)
    ]
    if names:
        sink.add("Attachments: " + ", ".join(names))
    return "\n\n".join([header, *sink.parts]) if header else sink.text()


def _part_text(part: Any, max_chars: int) -> str:
    try:
        content = part.get_content()
    except (LookupError, UnicodeError):  # unknown or lying charset
        payload = part.get_payload(decode=True) or b""
        content = decode_text(payload, max_chars)
    if isinstance(content, bytes):
        return decode_text(content, max_chars)
    return str(content)[:max_chars]


# --- dispatch -------------------------------------------------------------------------------

_EXTRACTORS: dict[str, Callable[[bytes, int], str]] = {
    "pdf": _extract_pdf,
    "docx": _extract_docx,
    "pptx": _extract_pptx,
    "xlsx": _extract_xlsx,
    "html": _extract_html,
    "htm": _extract_html,
    "txt": _extract_text,
    "md": _extract_text,
    "json": _extract_text,
    "csv": _extract_csv,
    "eml": _extract_eml,
}

SUPPORTED: frozenset[str] = frozenset(_EXTRACTORS)

_KIND = {"htm": "HTML", "md": "Markdown", "txt": "text", "eml": "e-mail"}


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def extract(data: bytes, extension: str, *, max_chars: int = DEFAULT_MAX_CHARS) -> Extracted:
    """Text of a document given its bytes and file extension (``"pdf"`` or ``".PDF"``).

    At most ``max_chars`` characters of text are returned. Raises :class:`ExtractionFailed`
    for unsupported types and for corrupt, encrypted or oversized files.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    ext = extension.strip().lower().lstrip(".")
    extractor = _EXTRACTORS.get(ext)
    if extractor is None:
        supported = ", ".join(sorted(SUPPORTED))
        raise ExtractionFailed(
            f"files of type {'.' + ext if ext else '(none)'} are not supported "
            f"(supported: {supported})"
        )
    try:
        raw = extractor(data, max_chars)
    except ExtractionFailed:
        raise
    except MemoryError as exc:
        raise ExtractionFailed("the file is too large to extract text from") from exc
    except Exception as exc:  # any vendor failure becomes a reason a person can read
        kind = _KIND.get(ext, ext.upper())
        raise ExtractionFailed(f"not a valid {kind} file ({_short(exc)})") from exc
    text = normalize_whitespace(raw)[:max_chars].rstrip()
    return Extracted(text=text, word_count=len(text.split()))
