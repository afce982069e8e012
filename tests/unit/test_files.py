"""Pure parts of the Files API: Content-Disposition names and upload type detection."""

from __future__ import annotations

import pytest

from copydesk.api.files import filename_from_disposition
from copydesk.errors import InvalidRequest
from copydesk.library import MIME_TYPES, detect_type, extension_of


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("attachment; filename=x.pdf", "x.pdf"),
        ('attachment; filename="x y.pdf"', "x y.pdf"),
        ("attachment; filename='x.pdf'", "x.pdf"),
        ("attachment; filename*=UTF-8''na%C3%AFve.pdf", "naïve.pdf"),
        ("attachment; filename=plain.pdf; filename*=UTF-8''na%C3%AFve.pdf", "naïve.pdf"),
        ("attachment; filename*=UTF-8''na%C3%AFve.pdf; filename=plain.pdf", "naïve.pdf"),
        ("attachment; filename*=utf-8'en'%E2%9C%93.txt", "✓.txt"),
        ('attachment; filename="semi;colon.txt"', "semi;colon.txt"),
        ('attachment; filename="quote\\"d.txt"', 'quote"d.txt'),
        ("ATTACHMENT; FileName=Upper.TXT", "Upper.TXT"),
        ("attachment;filename=tight.txt", "tight.txt"),
        ("attachment; filename=../../etc/passwd.txt", "passwd.txt"),
        ('attachment; filename="C:\\\\Users\\\\me\\\\a.txt"', "a.txt"),
        # A raw UTF-8 name arrives decoded as Latin-1 by the server.
        ("attachment; filename=" + "naïve.txt".encode().decode("latin-1"), "naïve.txt"),
        # A broken extended value falls back to the plain one.
        ("attachment; filename=ok.txt; filename*=bogus", "ok.txt"),
    ],
)
def test_filename_from_disposition(header: str, name: str) -> None:
    assert filename_from_disposition(header) == name


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "attachment",
        "inline; name=x",
        "attachment; filename=",
        'attachment; filename=""',
        "attachment; filename=..",
        "attachment; filename*=UTF-8''",
    ],
)
def test_no_usable_filename(header: str | None) -> None:
    assert filename_from_disposition(header) is None


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
ZIP = b"PK\x03\x04\x14\x00\x06\x00"


@pytest.mark.parametrize(
    ("name", "head", "ext", "media"),
    [
        ("a.pdf", b"%PDF-1.7\n", "pdf", False),
        ("A.PDF", b"%PDF-1.4", "pdf", False),
        ("a.docx", ZIP, "docx", False),
        ("a.pptx", ZIP, "pptx", False),
        ("a.xlsx", ZIP, "xlsx", False),
        ("a.png", PNG, "png", True),
        ("a.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpg", True),
        ("a.jpeg", b"\xff\xd8\xff\xe1", "jpeg", True),
        ("a.gif", b"GIF89a\x01\x00", "gif", True),
        ("a.webp", b"RIFF\x24\x00\x00\x00WEBPVP8 ", "webp", True),
        ("a.txt", b"hello world", "txt", False),
        ("a.txt", b"", "txt", False),
        ("a.md", "# Titre accentué".encode(), "md", False),
        ("a.csv", "a;b\ncaf\xe9;1\n".encode("cp1252"), "csv", False),
        ("a.csv", "é".encode()[:1], "csv", False),  # cut inside a character
        ("a.html", b"<!doctype html><p>x</p>", "html", False),
        ("a.htm", b"<p>x</p>", "htm", False),
        ("a.json", b'{"a": 1}', "json", False),
        ("a.eml", b"From: a@b.c\r\nSubject: hi\r\n\r\nbody", "eml", False),
        ("a.txt", "hi".encode("utf-16"), "txt", False),
    ],
)
def test_detect_type(name: str, head: bytes, ext: str, media: bool) -> None:
    found = detect_type(name, head)
    assert found.extension == ext
    assert found.mime_type == MIME_TYPES[ext]
    assert found.media is media


@pytest.mark.parametrize(
    ("name", "head", "rule"),
    [
        ("a.exe", b"MZ", "unsupportedType"),
        ("a", b"hello", "unsupportedType"),
        (".txt", b"hello", "unsupportedType"),  # a dot file has no extension
        ("a.doc", b"\xd0\xcf\x11\xe0", "unsupportedType"),
        ("a.pdf", b"hello", "contentMismatch"),
        ("a.docx", b"%PDF-1.7", "contentMismatch"),
        ("a.png", b"\xff\xd8\xff", "contentMismatch"),
        ("a.jpg", PNG, "contentMismatch"),
        ("a.gif", b"GIF", "contentMismatch"),
        ("a.webp", b"RIFF\x00\x00\x00\x00WAVE", "contentMismatch"),
        ("a.txt", PNG, "contentMismatch"),
        ("a.txt", b"%PDF-1.7", "contentMismatch"),
        ("a.csv", b"a,b\x00c", "contentMismatch"),
        ("a.json", b"\x01\x02\x03\x04", "contentMismatch"),
    ],
)
def test_detect_type_rejects(name: str, head: bytes, rule: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        detect_type(name, head)
    assert [p.rule for p in caught.value.problems] == [rule]


@pytest.mark.parametrize(
    ("name", "ext"),
    [("a.PDF", "pdf"), ("dir/x.tar.gz", "gz"), ("noext", ""), (".hidden", ""), ("a.", "")],
)
def test_extension_of(name: str, ext: str) -> None:
    assert extension_of(name) == ext
