"""Hostile files built in a blink (PDF bombs, a long single line), for the sandbox, extraction and
hostile-input tests."""

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
