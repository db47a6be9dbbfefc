"""Hostile files built in a blink (PDF bombs, a long single line; Office, OpenDocument, EPUB and e-mail bombs,
entity expansions, external entities, escaping member paths, a million cells, deep MIME nesting, encrypted and
truncated containers; image bombs, truncated and many-page images), for the sandbox, extraction, OCR and
hostile-input tests."""

import hashlib
import io
import struct
import zipfile
import zlib

MiB = 2**20
# A marker in hostile content: it must never reach a log, metadata or an exception text.
SECRET = "HOSTILE-SECRET-7f3a"


def inflating_stream(inflated_bytes: int, block: int = MiB) -> bytes:
    """A zlib (FlateDecode) stream of `inflated_bytes` zero bytes, built in a blink by repeating one
    compressed block: after a full flush a deflate block refers to nothing before it. ~1 KB per MiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed_block = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_block = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    checksum = 1
    zeros = bytes(block)
    for _ in range(inflated_bytes // block):
        checksum = zlib.adler32(zeros, checksum)
    return b"\x78\xda" + compressed_block * (inflated_bytes // block) + final_block + checksum.to_bytes(4, "big")


def bomb_pdf(inflated_bytes_per_page: int, pages: int = 1) -> bytes:
    """A valid PDF whose pages' content streams (FlateDecode) inflate to `inflated_bytes_per_page` each."""
    stream = inflating_stream(inflated_bytes_per_page)
    kids = b" ".join(b"%d 0 R" % (4 + 2 * page) for page in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for page in range(pages):
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 3 0 R >> >> >>" % (5 + 2 * page))
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def single_line(size: int) -> bytes:
    """`size` bytes of words on one line, with no sentence or paragraph boundary for the splitter to use."""
    words = f"lorem ipsum {SECRET} dolor sit amet ".encode()
    return (words * (size // len(words) + 1))[:size]


# --- hostile business documents (Office, OpenDocument, EPUB, e-mail) ----------------------------------------

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>{overrides}</Types>'
)
_RELS = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
         '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">{}</Relationships>')
_REL = '<Relationship Id="{id}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/{type}" ' \
       'Target="{target}"/>'
_WORD = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_SHEET = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"


def _zip(members: dict[str, bytes | str], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as container:
        for name, body in members.items():
            container.writestr(name, body)
    return buffer.getvalue()


def docx_members(body_xml: str = f"<w:p><w:r><w:t>Quarterly notes {SECRET}</w:t></w:r></w:p>",
                 prolog: str = "") -> dict[str, str]:
    """The parts of a minimal valid .docx whose body is `body_xml`, with `prolog` (a DOCTYPE) before its root."""
    return {
        "[Content_Types].xml": _CONTENT_TYPES.format(overrides=(
            '<Override PartName="/word/document.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>')),
        "_rels/.rels": _RELS.format(_REL.format(id="rId1", type="officeDocument", target="word/document.xml")),
        "word/document.xml": f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>{prolog}'
                             f'<w:document xmlns:w="{_WORD}"><w:body>{body_xml}</w:body></w:document>',
    }


def docx(body_xml: str | None = None, prolog: str = "") -> bytes:
    """A minimal valid .docx (a paragraph holding SECRET unless `body_xml` is given)."""
    return _zip(docx_members(body_xml, prolog) if body_xml is not None else docx_members(prolog=prolog))


def billion_laughs_docx(levels: int = 9) -> bytes:
    """A .docx whose document part declares the "billion laughs" entities (10**levels copies of 'lol')."""
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, levels + 1)]
    return docx(f"<w:p><w:r><w:t>&lol{levels};</w:t></w:r></w:p>",
                prolog=f"<!DOCTYPE w:document [{''.join(entities)}]>")


def external_entity_docx(path: str) -> bytes:
    """A .docx whose document part pulls the file at `path` in through an external entity (XXE)."""
    return docx("<w:p><w:r><w:t>&xxe;</w:t></w:r></w:p>",
                prolog=f'<!DOCTYPE w:document [<!ENTITY xxe SYSTEM "file://{path}">]>')


def external_entity_odt(path: str) -> bytes:
    """An .odt whose content.xml pulls the file at `path` in through an external entity (XXE)."""
    office = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
    text = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
    content = (f'<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE office:document-content '
               f'[<!ENTITY xxe SYSTEM "file://{path}">]><office:document-content xmlns:office="{office}" '
               f'xmlns:text="{text}"><office:body><office:text><text:p>&xxe;</text:p></office:text></office:body>'
               f'</office:document-content>')
    return _zip({"mimetype": "application/vnd.oasis.opendocument.text", "content.xml": content},
                zipfile.ZIP_STORED)


def entity_epub() -> bytes:
    """An .epub whose chapter declares an internal entity expansion (billion laughs, three levels)."""
    container = ('<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:'
                 'container"><rootfiles><rootfile full-path="book.opf" media-type="application/oebps-package+xml"/>'
                 '</rootfiles></container>')
    package = ('<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0"><manifest>'
               '<item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/></manifest><spine>'
               '<itemref idref="c1"/></spine></package>')
    chapter = ('<?xml version="1.0"?><!DOCTYPE html [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
               '<html xmlns="http://www.w3.org/1999/xhtml"><body><p>&b;</p></body></html>')
    return _zip({"mimetype": "application/epub+zip", "META-INF/container.xml": container, "book.opf": package,
                 "c1.xhtml": chapter}, zipfile.ZIP_STORED)


def docx_with_member(name: str, body: bytes | str = b"outside") -> bytes:
    """A valid .docx with one more member named `name` (e.g. '../../etc/cron.d/x')."""
    return _zip({**docx_members(), name: body})


def _raw_deflate_zeros(inflated_bytes: int, block: int = MiB) -> bytes:
    """Raw deflate data inflating to `inflated_bytes` zeros (a multiple of `block`), ~1 KB per MiB."""
    return inflating_stream(inflated_bytes, block)[2:-4]


def _zip_by_hand(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A ZIP of (name, deflated data, crc32, declared compressed size, declared inflated size) members, written
    without inflating anything: the declared sizes may lie."""
    out, central = bytearray(), bytearray()
    for name, data, crc, compressed, inflated in members:
        encoded = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, compressed, inflated,
                           len(encoded), 0) + encoded + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, compressed, inflated,
                               len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    directory = len(out)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                                 directory, 0)
    return bytes(out)


def _deflated(body: bytes) -> tuple[bytes, int, int, int]:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(body) + compressor.flush()
    return data, zlib.crc32(body), len(data), len(body)


def office_zip_bomb(inflated_bytes: int = 2 * 1024 * MiB, lie: bool = False) -> bytes:
    """A .docx with a member of `inflated_bytes` zeros (~1 KB on disk per MiB). Its sizes are declared honestly
    (refused on the compression ratio before inflating), or with `lie` as 1 KiB (zipfile inflates no more than
    the declared size, and the CRC then fails). The CRC is not the zeros' (the bomb is never inflated whole)."""
    members = [(name, *_deflated(body.encode())) for name, body in docx_members().items()]
    bomb = _raw_deflate_zeros(inflated_bytes)
    members.append(("word/media/image1.png", bomb, 0, len(bomb), 1024 if lie else inflated_bytes))
    return _zip_by_hand(members)


def million_cell_xlsx(rows: int = 10_000, columns: int = 100) -> bytes:
    """An .xlsx of one sheet of rows x columns numeric cells (a million by default; ~3 MB on disk), each value
    different so that it compresses as real data does, with its dimension record as Excel and LibreOffice write
    it (without one, openpyxl scans the whole sheet once for its size before the first row)."""
    workbook = (f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{_SHEET}" xmlns:r="http://schemas.'
                'openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Data" sheetId="1" '
                'r:id="rId1"/></sheets></workbook>')
    sheet_rows = "".join(
        f'<row r="{row + 1}">' + "".join(f"<c><v>{row * columns + column}</v></c>" for column in range(columns))
        + "</row>" for row in range(rows))
    return _zip({
        "[Content_Types].xml": _CONTENT_TYPES.format(overrides=(
            '<Override PartName="/xl/workbook.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/'
            'sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>')),
        "_rels/.rels": _RELS.format(_REL.format(id="rId1", type="officeDocument", target="xl/workbook.xml")),
        "xl/workbook.xml": workbook,
        "xl/_rels/workbook.xml.rels": _RELS.format(_REL.format(id="rId1", type="worksheet",
                                                               target="worksheets/sheet1.xml")),
        "xl/worksheets/sheet1.xml": f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{_SHEET}">'
                                    f'<dimension ref="A1:{_column_name(columns)}{rows}"/>'
                                    f"<sheetData>{sheet_rows}</sheetData></worksheet>",
    })


def _column_name(number: int) -> str:
    name = ""
    while number:
        number, remainder = divmod(number - 1, 26)
        name = chr(65 + remainder) + name
    return name


def nested_multipart_email(depth: int = 5_000) -> bytes:
    """An e-mail whose MIME parts are nested `depth` multiparts deep around one text part."""
    lines = ["From: a@example.com", "To: b@example.com", "Subject: nested", "MIME-Version: 1.0",
             'Content-Type: multipart/mixed; boundary="b0"', ""]
    for level in range(1, depth):
        lines += [f"--b{level - 1}", f'Content-Type: multipart/mixed; boundary="b{level}"', ""]
    lines += [f"--b{depth - 1}", "Content-Type: text/plain", "", SECRET]
    lines += [f"--b{level}--" for level in reversed(range(depth))]
    return "\r\n".join(lines).encode()


def encrypted_office_file(payload_bytes: int = 4096) -> bytes:
    """A password-protected Office file as Office writes one: an OLE2 compound file (CFB, version 3) holding the
    EncryptionInfo and EncryptedPackage streams (here of random bytes)."""
    sector = 512
    end, free, fat_sector = 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD
    stream_sectors = payload_bytes // sector
    package_start, info_start = 2, 2 + stream_sectors
    fat = [fat_sector, end]
    for start in (package_start, info_start):
        fat += [start + n + 1 for n in range(stream_sectors - 1)] + [end]
    fat += [free] * (sector // 4 - len(fat))
    header = struct.pack("<8s16sHHHHH6sIIIIIIIII", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", bytes(16), 0x3E, 3, 0xFFFE,
                         9, 6, bytes(6), 0, 1, 1, 0, 4096, end, 0, end, 0)
    header += struct.pack("<109I", 0, *([free] * 108))

    def entry(name: str, kind: int, child: int, right: int, start: int, size: int) -> bytes:
        encoded = (name + "\x00").encode("utf-16-le")
        return struct.pack("<64sHBBIII16sIQQIII", encoded, len(encoded), kind, 1, free, right, child, bytes(16), 0,
                           0, 0, start, size, 0)

    directory = (entry("Root Entry", 5, 1, free, end, 0) + entry("EncryptionInfo", 2, free, 2, info_start,
                 payload_bytes) + entry("EncryptedPackage", 2, free, free, package_start, payload_bytes)
                 + bytes(128))
    random = hashlib.sha256(SECRET.encode()).digest() * (payload_bytes // 32)
    return header + struct.pack(f"<{sector // 4}I", *fat) + directory + random + random


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first `keep` share of `data`: a container cut off mid-way (its central directory lost)."""
    return data[: int(len(data) * keep)]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def pixel_bomb_png(width: int = 50_000, height: int = 50_000, inflated_bytes: int = 16 * MiB) -> bytes:
    """A valid-looking grey PNG whose header declares `width` x `height` pixels (2.5 G by default: a decompression
    bomb), with `inflated_bytes` of zero rows in its data. ~16 KB; a reader that trusts the header is sunk."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", inflating_stream(inflated_bytes))
            + _png_chunk(b"IEND", b""))


def truncated_png(keep: float = 0.5) -> bytes:
    """A real PNG (Pillow-written noise, 640 x 480) cut after `keep` of its bytes, as an interrupted upload is."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((640, 480), 64).save(buffer, "PNG")
    data = buffer.getvalue()
    return data[: int(len(data) * keep)]


def many_frames_tiff(frames: int = 120) -> bytes:
    """A real multi-page TIFF (Pillow-written) of `frames` tiny blank pages: more pages than OCR takes."""
    from PIL import Image

    pages = [Image.new("1", (16, 16), 1) for _ in range(frames)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()
