"""Hostile files built in a blink (PDF bombs, a long single line, image bombs, truncated and many-page images),
for the sandbox, extraction, OCR and hostile-input tests."""

import io
import struct
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
