"""E-mail messages (.eml, RFC 822 / MIME), read with the standard library's `email` package (`policy.default`).

The text starts with a header block (Subject, From, To, Cc, Date), then the body: the text/plain parts, or the
text/html ones as text when there is no plain one. Attachments in a supported format are read as part of the
message: each under a heading "Attachment: <name>", its own headings one level down; one in another format, or
one that cannot be read, is named with the reason code, never read. MIME nesting deeper than MAX_MIME_DEPTH is
refused as too-deeply-nested; more than MAX_MIME_PARTS parts as content-limit.
"""

from __future__ import annotations

import email
import re
from email import policy
from email.message import EmailMessage

from ingest_pipeline.core.extraction import MARKDOWN_FORMATS, ReasonCode, UnreadableDocument
from ingest_pipeline.core.formats.markup import MarkdownText, escape_markup, html_blocks

MAX_MIME_DEPTH = 32
MAX_MIME_PARTS = 1_000
MAX_ATTACHMENT_DEPTH = 2  # an attached message's attachments are read; one level further they are only named
_HEADERS = ("Subject", "From", "To", "Cc", "Date")
_ATX = re.compile(r"^(#{1,5})(?=[ \t])", re.MULTILINE)


def read_eml(document_name: str, data: bytes, max_bytes: int, depth: int = 0) -> MarkdownText:
    """The message's header block, body and readable attachments, as Markdown."""
    message = email.message_from_bytes(data, policy=policy.default)
    out = MarkdownText()
    header_lines = []
    for name in _HEADERS:
        value = message.get(name)
        if value is not None and str(value).strip():
            header_lines.append(f"{name}: {' '.join(str(value).split())}")
    out.paragraph("\n".join(header_lines))

    plain, html, attachments = [], [], []
    stack = [(message, 0)]
    parts = 0
    while stack:
        part, level = stack.pop()
        parts += 1
        if parts > MAX_MIME_PARTS:
            raise UnreadableDocument(document_name, f"an e-mail of more than {MAX_MIME_PARTS} MIME parts",
                                     ReasonCode.CONTENT_LIMIT)
        if level > MAX_MIME_DEPTH:
            raise UnreadableDocument(document_name, f"MIME parts nested more than {MAX_MIME_DEPTH} deep",
                                     ReasonCode.TOO_DEEPLY_NESTED)
        if part.is_multipart():
            stack.extend((child, level + 1) for child in reversed(list(part.iter_parts())))
            continue
        if part.get_content_disposition() == "attachment" or part.get_filename():
            attachments.append(part)
        elif part.get_content_type() == "text/plain":
            plain.append(_text_of(part))
        elif part.get_content_type() == "text/html":
            html.append(_text_of(part))
    if plain:
        for body in plain:
            out.paragraph(body)
    else:
        for body in html:
            html_blocks(body, out, heading_offset=1)
    for attachment in attachments:
        _attachment(document_name, attachment, out, max_bytes, depth)
    return out


def _text_of(part: EmailMessage) -> str:
    try:
        return part.get_content()
    except (LookupError, UnicodeError, ValueError):  # an unknown or lying charset
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", "replace")


def _attachment(document_name: str, part: EmailMessage, out: MarkdownText, max_bytes: int, depth: int) -> None:
    from ingest_pipeline.core.extraction import extract_text
    from ingest_pipeline.core.formats.detect import detect_format

    name = " ".join((part.get_filename() or "unnamed").split())
    out.heading(1, f"Attachment: {name}")
    data = part.get_payload(decode=True) or b""
    try:
        fmt = detect_format(name, data)
        if fmt is None:
            raise UnreadableDocument(name, "unsupported format", ReasonCode.UNSUPPORTED_FORMAT)
        if fmt == "eml":
            if depth + 1 > MAX_ATTACHMENT_DEPTH:
                raise UnreadableDocument(name, "attached messages nested too deeply", ReasonCode.TOO_DEEPLY_NESTED)
            text, _ = read_eml(name, data, max_bytes, depth + 1).build()
            out.markdown(_ATX.sub(r"#\1", text))
            return
        extracted = extract_text(name, data, max_bytes)
    except UnreadableDocument as exc:
        out.paragraph(f"(attachment not read: {exc.code})")
        return
    if extracted.format in MARKDOWN_FORMATS:
        out.markdown(_ATX.sub(r"#\1", extracted.text))
    else:
        out.markdown(escape_markup(extracted.text))
