"""Text extraction from real documents generated here (no binary fixtures)."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from email.message import EmailMessage

import pytest

from copydesk.errors import CopydeskError
from copydesk.extraction import (
    SUPPORTED,
    Extracted,
    ExtractionFailed,
    extract,
    normalize_whitespace,
)

SENTENCE_1 = "The quick brown fox jumps over the lazy dog."
SENTENCE_2 = "Copydesk extracts plain text from uploaded files."


def words(text: str) -> int:
    return len(text.split())


# --- generators ---------------------------------------------------------------------------


def make_pdf(pages: list[list[str]], encrypt_password: str | None = None) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.cell(text=line, new_x="LMARGIN", new_y="NEXT")
    data = bytes(pdf.output())
    if encrypt_password is None:
        return data
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=encrypt_password, algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Quarterly Report", level=1)
    document.add_paragraph(SENTENCE_1)
    document.add_paragraph("Spaced    out\ttext")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Region"
    table.cell(0, 1).text = "Revenue"
    table.cell(1, 0).text = "North"
    table.cell(1, 1).text = "42"
    document.add_paragraph(SENTENCE_2)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_pptx() -> bytes:
    import pptx
    from pptx.util import Inches

    presentation = pptx.Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[1])
    slide.shapes.title.text = "Launch Plan"
    slide.placeholders[1].text = SENTENCE_1
    slide.notes_slide.notes_text_frame.text = "Speaker notes here"
    second = presentation.slides.add_slide(presentation.slide_layouts[5])
    second.shapes.title.text = "Numbers"
    table = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    table.cell(0, 0).text = "Alpha"
    table.cell(0, 1).text = "Beta"
    table.cell(1, 0).text = "Gamma"
    table.cell(1, 1).text = "Delta"
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def make_xlsx(rows: int = 2) -> bytes:
    import datetime

    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sales"
    sheet.append(["Name", "Amount", "Date"])
    for i in range(rows):
        sheet.append([f"item{i}", i * 1.5, datetime.date(2024, 1, 1 + i % 28)])
    other = workbook.create_sheet("Summary")
    other.append(["Total", "=SUM(Sales!B2:B3)"])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


# --- formats ----------------------------------------------------------------------------------


def test_pdf() -> None:
    result = extract(make_pdf([[SENTENCE_1], [SENTENCE_2]]), "pdf")
    assert SENTENCE_1 in result.text
    assert SENTENCE_2 in result.text
    assert result.word_count == words(SENTENCE_1) + words(SENTENCE_2) == 16
    assert "\n\n" in result.text  # pages are separate paragraphs


def test_pdf_extension_is_case_and_dot_insensitive() -> None:
    assert extract(make_pdf([[SENTENCE_1]]), ".PDF").text == SENTENCE_1


def test_docx_paragraphs_and_tables_in_order() -> None:
    result = extract(make_docx(), "docx")
    assert result.text.split("\n\n") == [
        "Quarterly Report",
        SENTENCE_1,
        "Spaced out text",
        "Region | Revenue",
        "North | 42",
        SENTENCE_2,
    ]
    assert result.word_count == 2 + 9 + 3 + 3 + 3 + 7


def test_pptx_shapes_tables_and_notes() -> None:
    result = extract(make_pptx(), "pptx")
    for expected in ("Launch Plan", SENTENCE_1, "Speaker notes here", "Numbers"):
        assert expected in result.text
    assert "Alpha | Beta\nGamma | Delta" in result.text
    assert result.word_count == 2 + 9 + 3 + 1 + 6


def test_xlsx_rows_and_sheets() -> None:
    result = extract(make_xlsx(), "xlsx")
    assert result.text.splitlines()[:4] == [
        "Sheet: Sales",
        "Name, Amount, Date",
        "item0, 0, 2024-01-01",
        "item1, 1.5, 2024-01-02",
    ]
    assert "\n\nSheet: Summary\nTotal" in result.text
    # data_only: an unevaluated formula has no cached value, so it is not shown as code.
    assert "SUM" not in result.text
    assert result.word_count == 2 + 3 + 3 + 3 + 2 + 1


def test_html_drops_script_and_style_and_keeps_blocks() -> None:
    html = b"""<!doctype html><html><head><title>Page Title</title>
    <style>body { color: red }</style><script>var hidden = "secret";</script></head>
    <body><h1>Heading</h1><p>First   paragraph with <b>bold</b> text.</p>
    <p>Second&nbsp;paragraph &amp; more<br>after break</p>
    <ul><li>one</li><li>two</li></ul>
    <table><tr><td>a</td><td>b</td></tr></table><noscript>enable js</noscript></body></html>"""
    result = extract(html, "html")
    assert "secret" not in result.text
    assert "color" not in result.text
    assert "enable js" not in result.text
    assert result.text.split("\n\n") == [
        "Page Title",
        "Heading",
        "First paragraph with bold text.",
        "Second paragraph & more\nafter break",
        "one",
        "two",
        "a b",
    ]
    assert result.word_count == 2 + 1 + 5 + 6 + 2 + 2


def test_htm_alias() -> None:
    assert extract(b"<p>hello</p><p>world</p>", "htm").text == "hello\n\nworld"


def test_csv_rows_joined() -> None:
    data = b'name,city\r\n"Smith, J",Paris\r\n,\r\nLee,  Oslo \r\n'
    result = extract(data, "csv")
    assert result.text == "name, city\nSmith, J, Paris\nLee, Oslo"
    assert result.word_count == 7


def test_csv_malformed_raises() -> None:
    # A single field beyond the csv module's field size limit (131,072 characters).
    with pytest.raises(ExtractionFailed, match=r"not a valid CSV file \(line 1: field larger"):
        extract(b'a,"' + b"x" * 200_000 + b'"\n', "csv")


def test_eml_plain_body_and_attachments() -> None:
    message = EmailMessage()
    message["From"] = "Ann <ann@example.com>"
    message["To"] = "bob@example.com"
    message["Subject"] = "Budget review"
    message["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    message.set_content(SENTENCE_1)
    message.add_alternative("<p>HTML version only</p>", subtype="html")
    message.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="q1.pdf")
    result = extract(message.as_bytes(), "eml")
    lines = result.text.splitlines()
    assert lines[:4] == [
        "From: Ann <ann@example.com>",
        "To: bob@example.com",
        "Subject: Budget review",
        "Date: Mon, 01 Jan 2024 10:00:00 +0000",
    ]
    assert SENTENCE_1 in result.text
    assert "HTML version only" not in result.text
    assert result.text.endswith("Attachments: q1.pdf")


def test_eml_html_only_body_is_converted() -> None:
    message = EmailMessage()
    message["From"] = "ann@example.com"
    message["Subject"] = "Hi"
    message.set_content(
        "<html><style>p{}</style><p>Hello <i>there</i></p><p>Bye</p></html>", subtype="html"
    )
    result = extract(message.as_bytes(), "eml")
    assert result.text == "From: ann@example.com\nSubject: Hi\n\nHello there\n\nBye"
    assert result.word_count == 2 + 2 + 2 + 1


def test_eml_without_headers_fails() -> None:
    with pytest.raises(ExtractionFailed, match="not a valid e-mail"):
        extract(b"\n\njust a body", "eml")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("café déjà vu".encode("latin-1"), "café déjà vu"),
        ("\ufeffnaïve façade".encode("utf-8-sig"), "naïve façade"),
        ("plain ütf-8 ✓".encode(), "plain ütf-8 ✓"),
        ("utf16 text ✓".encode("utf-16"), "utf16 text ✓"),
        ("smart \u201cquotes\u201d".encode("cp1252"), "smart \u201cquotes\u201d"),
    ],
)
def test_text_charset_detection(data: bytes, expected: str) -> None:
    result = extract(data, "txt")
    assert result.text == expected
    assert "\ufeff" not in result.text
    assert result.word_count == words(expected)


def test_text_whitespace_normalised_and_paragraphs_kept() -> None:
    data = b"  one   two\t\tthree  \r\n\r\n\r\n\r\nfour\nfive  \n"
    result = extract(data, "md")
    assert result.text == "one two three\n\nfour\nfive"
    assert result.word_count == 5


def test_json_is_text() -> None:
    assert extract(b'{"key": "value"}', "json").text == '{"key": "value"}'


def test_normalize_whitespace_strips_controls() -> None:
    assert normalize_whitespace("a\x00b\u00a0 c\x0c\nd") == "ab c\nd"


# --- failures -----------------------------------------------------------------------------------


def test_extraction_failed_is_a_copydesk_error_with_reason() -> None:
    error = ExtractionFailed("the PDF is encrypted")
    assert isinstance(error, CopydeskError)
    assert error.reason == error.message == str(error) == "the PDF is encrypted"


def test_unsupported_extension() -> None:
    with pytest.raises(ExtractionFailed, match=r"files of type \.exe are not supported"):
        extract(b"MZ", "exe")


def test_random_bytes_as_pdf() -> None:
    with pytest.raises(ExtractionFailed, match=r"not a valid PDF file \(no %PDF header\)"):
        extract(bytes(range(256)) * 8, "pdf")


def test_truncated_pdf() -> None:
    data = make_pdf([[SENTENCE_1]])
    with pytest.raises(ExtractionFailed, match="not a valid PDF file") as caught:
        extract(data[: len(data) // 3], "pdf")
    assert caught.value.__cause__ is not None


def test_encrypted_pdf() -> None:
    data = make_pdf([[SENTENCE_1]], encrypt_password="s3cret")
    with pytest.raises(ExtractionFailed, match="the PDF is encrypted"):
        extract(data, "pdf")


def test_pdf_with_only_an_owner_password_opens() -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([[SENTENCE_1]]))))
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    assert extract(out.getvalue(), "pdf").text == SENTENCE_1


@pytest.mark.parametrize(("ext", "kind"), [("docx", "DOCX"), ("pptx", "PPTX"), ("xlsx", "XLSX")])
def test_truncated_office_zip(ext: str, kind: str) -> None:
    data = {"docx": make_docx, "pptx": make_pptx, "xlsx": make_xlsx}[ext]()
    with pytest.raises(
        ExtractionFailed, match=rf"not a valid {kind} file \(zip archive expected\)"
    ):
        extract(data[: len(data) // 2], ext)


def test_zip_that_is_not_a_docx() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("hello.txt", "not a document")
    with pytest.raises(ExtractionFailed, match="not a valid DOCX file") as caught:
        extract(out.getvalue(), "docx")
    assert caught.value.__cause__ is not None


def test_legacy_or_encrypted_office_file() -> None:
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    with pytest.raises(ExtractionFailed, match="password-protected or in the old binary"):
        extract(ole, "xlsx")


def test_zip_bomb_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import copydesk.extraction as extraction

    monkeypatch.setattr(extraction, "MAX_UNPACKED_BYTES", 1024 * 1024)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * (2 * 1024 * 1024))
    assert len(out.getvalue()) < 10_000
    with pytest.raises(ExtractionFailed, match="unpacks to 2 MiB, over the 1 MiB limit"):
        extract(out.getvalue(), "docx")


def test_max_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        extract(b"x", "txt", max_chars=0)


# --- max_chars -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["txt", "csv", "html"])
def test_max_chars_text_formats(ext: str) -> None:
    line = "word " * 20 + "\n"
    data = (f"<p>{line}</p>" if ext == "html" else line).encode() * 10_000
    result = extract(data, ext, max_chars=1000)
    assert 900 <= len(result.text) <= 1000
    assert result.word_count == len(result.text.split())


def test_max_chars_stops_reading_pdf_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    from pypdf import PageObject

    calls = 0
    original = PageObject.extract_text

    def counting(self: PageObject, *args: object, **kwargs: object) -> str:
        nonlocal calls
        calls += 1
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PageObject, "extract_text", counting)
    data = make_pdf([[SENTENCE_1] * 20 for _ in range(20)])
    result = extract(data, "pdf", max_chars=1000)
    assert len(result.text) <= 1000
    assert result.text.startswith(SENTENCE_1)
    assert calls <= 2


@pytest.mark.parametrize("ext", ["docx", "pptx", "xlsx", "eml"])
def test_max_chars_office_and_email(ext: str) -> None:
    if ext == "xlsx":
        data = make_xlsx(rows=2000)
    elif ext == "docx":
        import docx

        document = docx.Document()
        for _ in range(500):
            document.add_paragraph(SENTENCE_1)
        out = io.BytesIO()
        document.save(out)
        data = out.getvalue()
    elif ext == "pptx":
        import pptx

        presentation = pptx.Presentation()
        for _ in range(100):
            slide = presentation.slides.add_slide(presentation.slide_layouts[1])
            slide.placeholders[1].text = SENTENCE_1 * 3
        out = io.BytesIO()
        presentation.save(out)
        data = out.getvalue()
    else:
        message = EmailMessage()
        message["Subject"] = "long"
        message.set_content((SENTENCE_1 + "\n") * 1000)
        data = message.as_bytes()
    result = extract(data, ext, max_chars=500)
    assert 0 < len(result.text) <= 500
    assert result == Extracted(result.text, len(result.text.split()))


# --- module hygiene ---------------------------------------------------------------------------


def test_supported_extensions() -> None:
    assert {"pdf", "docx", "pptx", "xlsx", "html", "htm", "txt", "md", "json", "csv", "eml"} == (
        SUPPORTED
    )


def test_import_is_light() -> None:
    code = (
        "import sys, copydesk.extraction; "
        "heavy = {'pypdf', 'docx', 'pptx', 'openpyxl', 'lxml'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
