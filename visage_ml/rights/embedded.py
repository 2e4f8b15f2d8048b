"""Files held inside other files: what the erasure and the verifier look for besides whole files.

A photograph's exact bytes outlive it inside files of an ordinary day: an HTML export of a notebook
(``jupyter nbconvert --to html`` inlines each image as a base64 ``data:`` URL), the photo
base64-encoded in a JSON or CSV file, an archive made for a colleague (zip, tar, gzip, bzip2, xz,
and the zstd, zlib and LZMA streams caches are compressed in; NumPy's ``.npz`` and torch's ``.pt``
are zip files), a pickle or a ``.npy`` array of its bytes, a Parquet table holding them in a column,
a SQLite database in a BLOB or base64 in a TEXT (:mod:`visage_ml.rights.embedded_db`), a PDF report
showing it (img2pdf and pdflatex embed a JPEG's bytes as they are; reportlab ASCII85-encodes them
first) or holding it attached (``pdfattach``, a portfolio: deflated), a data set packed in an Arrow
IPC file (Hugging Face ``datasets``' shards and cache; Feather, its buffers LZ4-compressed by
default), HDF5, LMDB or TFRecord, read as an array is (:mod:`visage_ml.rights.embedded_formats`).
:func:`inside` gives the SHA-256 of each file such a file holds, to be matched as a whole file is
(:mod:`visage_ml.rights.content_scan`).

What a file is comes from its first bytes (:func:`kind`), never from its name: a copy renamed
keeps its content. A text file (UTF-8, no NUL; or UTF-16 with its byte order mark, or of
ASCII without one, read as the UTF-8 it decodes to: :mod:`~visage_ml.rights.embedded_utf16`)
is read for base64 runs (a ``data:`` URL's, a JSON or CSV field's, one wrapped in lines or two
back to back; of the standard or URL-safe alphabet, padded or not, its slashes escaped as JSON
may write them, ``\\/``); the copies step cuts a matching run out of it and keeps the file
(:func:`cut_encoded`). In a pickle, an array or a PDF, a PNG (signature to IEND) or a JPEG (SOI
to EOI, :func:`~visage_ml.rights.embedded_photos._jpegs`; a phone's multi-picture file,
its JPEGs one after another, padding between them too; a motion photo, its video's MP4 boxes
after them; a Galaxy's photograph, Samsung's trailer after it) lies as it is, and is found so;
a pickle's ``bytes`` values of a size sought are compared whole, whatever their format (a
GIF, a WebP, a sealed file: :func:`_pickled_values`; a pickle of protocol 2, ``torch.save``'s,
holds each as a latin-1 string's UTF-8: those of a size sought or that hold a PNG's or a JPEG's
signature are decoded first, :func:`_pickled`; one of protocol 0 or 1, told by its first
opcodes, its strings of either and Python 2's quoted ``str``, :func:`_old_pickled`; Python
2's ``str`` of protocol 1 and 2 and its ``bytearray`` too); a ``.npy`` file's object array is a
pickle after its header (:func:`_npy_pickle`), and an array of 32 bytes is tested for a key
(:func:`_npy_key`); a
PDF's ASCII85 streams are decoded, and those deflated first (``/FlateDecode``: an attached
file, a JPEG deflated once more) inflated and read as an archive's member is
(:func:`~visage_ml.rights.embedded_pdf._flates`); an Arrow file's or stream's byte and text
columns are also read with pyarrow, batch by batch, its LZ4 or ZSTD buffers decompressed
(:func:`~visage_ml.rights.embedded_tables._arrow`). An archive, a pickle, an array, a table, a
database or a PDF is not rewritten: one of the project stops the erasure for the operator to
decide, a DVC object goes whole (:func:`~visage_ml.rights.erasure.copies.holds_inside`).
Archives and compressed streams are read member by member, nested ones too (to :data:`DEPTH`).
What is larger than
:data:`EMBED_MAX` is not held in memory but looked inside from its file, whatever its size
(:func:`inside_large`): an archive member by member, a text file a window at a time
(:func:`inside_text`), a Parquet table (a data set's shard) a few rows at a time, a pickle, an
array, an Arrow file or a PDF copied to an unnamed file of :data:`SPILL_DIR` (:func:`mapped`:
another program truncating a file mapped kills the process) and that mapped read-only and walked
as bytes are (the system pages it in, the walks let go of what lies behind them; an Arrow file's
batches read in place, one at a time), a database table by table from its file. Wherever it
lies: an
archive's member that large is first written to an unnamed file of :data:`SPILL_DIR`, an object
of a DVC remote (S3) or a git blob, which streams by, to one in a folder of the project
(:class:`~visage_ml.rights.content_scan._Reader`); with no room for it, it is not shown clean
(:class:`NotSpilled`); a database there is copied on to a named one, which SQLite can open
(:func:`~visage_ml.rights.embedded_spill._database`). A part of a size nothing sought has is
not hashed (``sizes``).

Not looked inside: other binary formats (another database than SQLite, an image container, an
encrypted archive), an Arrow file's columns of numbers compressed (a photo's bytes as a list of
uint8) or one pyarrow cannot read (what lies in it as it is is still found), an HDF5 dataset
chunked and compressed (gzip, lzf), a TFRecord compressed with ZLIB (one compressed with GZIP is
a gzip file), a PDF's streams encrypted or compressed otherwise than deflated first (LZW;
ASCII85, then deflated) and an image it re-encoded (a PNG always is: its pixels are deflated, not
its file), a phone's multi-picture file of more than four JPEGs that its MP index does not
declare (or more than 64) in the middle of JPEGs one right after another (an image column) or
with bytes between them, with more than a MiB between its JPEGs or before its video or
trailer, or with a trailer neither an MP4 nor Samsung's (SEF, its older ``QDIOBS`` one too),
a compressed stream
past the point it breaks (a zip's damaged member is passed over, the rest read and the zip not
shown clean; a tar's damaged header is skipped to the next, as GNU tar does, its first too, and
zero blocks before it as ``tar -i`` skips them, a V7 tar's headers told by their checksum:
:data:`TAR_BLOCK`; one whose start was overwritten, its first :data:`SNIFF` bytes telling it
as nothing, is read from its first header however far where it is read anyway (a size sought,
a git blob, a remote's object streamed), not as a file of no size sought nor held inside
another file; a damaged or
encrypted SQLite database is not shown clean; its
``-wal`` file is read with it, as SQLite does; one whose freed space holds a deleted
photograph's start is not shown clean either), of rows deleted but left in freed pages what
begins as no photograph does, a ``-wal``'s frames SQLite would not apply, base64 of another
alphabet than those two (base32, but an erased subject's key's; ASCII85 outside a PDF) or
split otherwise than by line breaks, and, of two wrapped back to back in one run of lines,
the first's lines all full, one whose bytes begin as no known file does
where the sizes sought are not known (:func:`~visage_ml.rights.embedded_text._splits`;
:func:`encoded` and :func:`cut_encoded` know none, so such a one found by its size is not cut,
and stops the erasure as an archive does). A re-encoded, resized or cropped face has other bytes
wherever it is: no scan by hash finds it.

This module tells what a file is and hands it to its reader, each a module beside it: base64
texts (:mod:`~visage_ml.rights.embedded_text`; UTF-16 ones decoded by
:mod:`~visage_ml.rights.embedded_utf16`), PNGs and JPEGs lying as they are
(:mod:`~visage_ml.rights.embedded_photos`), a PDF's streams (:mod:`~visage_ml.rights.embedded_pdf`),
tables (:mod:`~visage_ml.rights.embedded_tables`), archives
(:mod:`~visage_ml.rights.embedded_archives`), databases (:mod:`~visage_ml.rights.embedded_db`),
data sets' containers (:mod:`~visage_ml.rights.embedded_formats`); a member held in memory or
spilled to a file (:mod:`~visage_ml.rights.embedded_spill`), a large file mapped
(:mod:`~visage_ml.rights.embedded_mapping`). They import this module for what they share (the
kinds, the budget, :func:`_part`), so it imports each where it is used.
"""

from __future__ import annotations

import base64
import bz2
import codecs
import contextlib
import functools
import hashlib
import io
import itertools
import lzma
import mmap
import os
import pickletools
import re
import shutil
import string
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Container, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, cast

from visage_ml.io import CHUNK, atomic_write_bytes, private_dir
from visage_ml.rights import embedded_formats, embedded_utf16
from visage_ml.rights.embedded_mapping import LET_GO, Buffer, _find, _let_go, _Map

# Looked inside in memory up to this size; a larger member is hashed as it streams.
EMBED_MAX = 64 << 20
# Archives within archives (a backup of a folder holding a .npz), base64 of a zip: so deep.
DEPTH = 4
# Where a member is spilled to, out of memory (:mod:`~visage_ml.rights.embedded_spill`), and a
# file copied to be mapped (:func:`spill_into`, by each scan of a project); None: the system's
# temporary folder.
SPILL_DIR: Path | None = None
SPILL_FOLDER = Path(".visage")
# What a part shows first, to tell what it is.
SNIFF = 4096
# What :func:`kind` reads of a pickled value to tell whether it holds files (a tar's magic at
# byte 257, a PDF's header within its first kilobyte).
KIND_SNIFF = 1032
LATIN1_HEAD = 16  # what a protocol-2 string is decoded of first: the magic numbers at its start

TEXT = "text"
# A UTF-16 text, its byte order mark first (PowerShell's ``Out-File``, Excel's "Unicode text";
# or UTF-16LE of printable ASCII without one): read as the UTF-8 text it decodes to
# (:mod:`~visage_ml.rights.embedded_utf16`).
UTF16 = "utf16"
ZIP = "zip"
TAR = "tar"
COMPRESSED = "compressed"
PARQUET = "parquet"
# A pickle, a .npy array, or a data set's container (Arrow, HDF5, LMDB, TFRecord:
# :mod:`~visage_ml.rights.embedded_formats`): the bytes it holds lie in it as they are.
BINARY = "binary"
# A SQLite database: read table by table (:mod:`visage_ml.rights.embedded_db`).
SQLITE = "sqlite"
# A PDF: a JPEG it shows lies in it as it is (a DCTDecode stream), ASCII85-encoded, or deflated
# (an attached file's exact bytes too).
PDF = "pdf"
KINDS = frozenset({TEXT, UTF16, ZIP, TAR, COMPRESSED, PARQUET, BINARY, SQLITE, PDF})
# Kinds read as a stream from their file: looked inside whatever its size.
STREAMED = frozenset({ZIP, TAR, COMPRESSED})
# Kinds looked inside from their file when too large to hold (:func:`inside_large`): all but a
# database, read from its own path (:mod:`visage_ml.rights.embedded_db`).
LARGE = frozenset({*STREAMED, TEXT, UTF16, BINARY, PDF, PARQUET, SQLITE})

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
TAR_MAGIC, TAR_AT = b"ustar", 257
# A tar is its 512-byte blocks, each told a header by its checksum, whatever its magic (a V7
# tar, ``tar --format=v7``, has none). GNU tar reads a file whose first block is no header on:
# ``tar -x`` skips a damaged header (its checksum wrong, or the block overwritten) to the next
# one and extracts the members after it, as it does past one in the middle; ``tar -i`` skips
# zero blocks too, which end a tar otherwise (an empty tar before it: ``cat empty.tar
# photos.tar``, 10 KiB of zeros; one written at an offset into a zeroed file). Such a file is
# told a tar where its first block is zeros, or where a block of its first bytes bears a header
# (:func:`_tar_blocks`): a header's whole magic (POSIX's and pax's ``ustar\0`` and ``00``,
# GNU's ``ustar  \0``: a NUL in each, so never a text's) at a later block, or, in any block, a
# header's numeric fields as tar writes them (:data:`TAR_NUMBERS`: a header whose magic or
# checksum was damaged; only where its first bytes are no pickle of protocol 0 or 1, whose long
# number of octal digits reads as them) or its checksum; it is read from the first block
# bearing a header's magic or its checksum
# (:func:`~visage_ml.rights.embedded_archives._tar_start`), however far. A file those bytes tell
# as nothing (kind() None: a tar whose first 8 KiB were overwritten with random bytes) that is
# read anyway has every block searched so as it is read, and is read as a tar from the first
# found (:class:`~visage_ml.rights.embedded_archives.HeaderSearch`); one of no size sought is
# not read.
TAR_BLOCK = 512
TAR_MAGICS = (b"ustar\x0000", b"ustar  \x00")
# A header's numeric fields but its checksum, where they lie and whether tar writes a digit in
# them: mode, uid, gid, size, mtime; each in octal, its digits between white space or NULs (a
# uid, a gid, an mtime may be left blank), or, but the mode, in base 256 (GNU tar's for a large
# value: its first byte 0x80 or 0xff). Each of 48 bytes in 14 of 256 values: no other binary
# file bears them so by chance (none of 184,047 files of a virtual environment and /usr does),
# nor a text (a header holds NULs: its name's padding, its fields' ends).
TAR_NUMBERS = (
    (100, 108, True, False),
    (108, 116, False, True),
    (116, 124, False, True),
    (124, 136, True, True),
    (136, 148, False, True),
)
# The checksum's field, written in octal as the mode is (:func:`_tar_checksummed`).
TAR_CHECKSUM = slice(148, 156)
# What a number written in octal is made of: digits, and white space (tarfile strips it, as
# GNU tar skips it) and NULs around them.
TAR_BLANK = b" \t\n\v\f\r\x00"
TAR_OCTAL = b"01234567" + TAR_BLANK
TAR_BASE256 = (0x80, 0xFF)
COMPRESSED_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00")
BZIP2_MAGIC = re.compile(rb"BZh[1-9]1AY&SY")
# Streams with no file format around them, as libraries write caches: zstd's frame
# (``pandas.to_pickle(..., compression="zstd")``, ``tar --zstd``, a ``.zst`` file) and LZ4's
# (``joblib.dump(..., compress="lz4")``, ``tar --lz4``, a ``.lz4`` file), four bytes each, read with
# pyarrow's codecs (:data:`ARROW_CODECS`: the standard library has neither); zlib's
# (``joblib.dump(..., compress=3)``, joblib's default compression), two bytes (deflate, a window of
# 32 KiB, the levels' flags) that other files begin with too; LZMA's "alone" format
# (``joblib.dump(..., compress="lzma")``, a ``.lzma`` file), its properties byte (every encoder's
# default) then a dictionary of a power of two. A zlib or LZMA stream is taken for one only where
# its first bytes are no text and decompress (:func:`stream_kind`).
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_MAGIC = b"\x04\x22\x4d\x18"
ZLIB_MAGIC = re.compile(rb"\x78[\x01\x5e\x9c\xda]")
LZMA_ALONE_MAGIC = b"\x5d"
GZIP, XZ, BZIP2, ZLIB, LZMA_ALONE = "gzip", "xz", "bzip2", "zlib", "lzma"
ZSTD, LZ4 = "zstd", "lz4"  # pyarrow's names of its codecs too
ARROW_CODECS = frozenset({ZSTD, LZ4})
PARQUET_MAGIC = b"PAR1"
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")  # its -wal file (embedded_db)
SQLITE_JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")  # its hot -journal (embedded_db)
NPY_MAGIC = b"\x93NUMPY"
# A ``.npy`` file of an object array (``np.save(f, np.array([a, b], dtype=object))``, the
# default ``allow_pickle``; an ``.npz``'s members too) holds the array pickled after its header,
# whose ``descr`` says so: its ``bytes`` are read as a pickle's (:func:`_npy_pickle`).
NPY_HEADER = re.compile(rb"""['"]descr['"]\s*:\s*['"][|<>=]?O""")
PICKLE_MAGIC = re.compile(rb"\x80[\x02-\x05]")
# 32 bytes as a pickle holds ``bytes`` (protocol 3 and up: SHORT_BINBYTES, its length a byte)
# or a ``bytearray`` (5: BYTEARRAY8, eight): an erased subject's key pickled as it is, among
# other values (:func:`_pickled`).
PICKLED_KEY = re.compile(rb"C\x20|\x96\x20\x00{7}")
# torch's format before 1.6 (``torch.save(..., _use_new_zipfile_serialization=False)``, no zip):
# its pickles, the first of its magic number, then each tensor's storage as it is after its
# element count, eight bytes little-endian; one of a key's 32 bytes counts 32, 16, 8 or 4
# elements of one, two, four or eight bytes (:func:`_pickled`).
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
TORCH_STORAGE_KEY = re.compile(rb"[\x04\x08\x10\x20]\x00{7}")
# Protocol 3 and up hold every ``bytes`` value (a NumPy array's buffer too) as it is, after an
# opcode and its length, little-endian: SHORT_BINBYTES (``C``, one byte), BINBYTES (``B``,
# four), BINBYTES8 (eight: over 4 GiB) and protocol 5's BYTEARRAY8 (eight); each value of a
# size sought is compared whole, whatever its format (a GIF, a WebP, a sealed file, a zip:
# :func:`_pickled_values`). Each opcode is found where a length this file could hold follows
# it (BINBYTES': :func:`_binbytes`), by an expression whose lookahead is tried in C: one pass
# over the file each (0.12 s for 200 MiB; one for two opcodes took ten times as long), ``B``
# one byte in 256 of other bytes, a length's highest byte fitting a file of 200 MiB one in 20.
SHORT_BINBYTES = re.compile(rb"C(?=[\s\S])")
BINBYTES8 = re.compile(rb"\x8e(?=[\s\S]{5}\x00{3})")
BYTEARRAY8 = re.compile(rb"\x96(?=[\s\S]{5}\x00{3})")
SHORT_MAX = 255  # SHORT_BINBYTES' longest
# Python 2 pickled a ``str`` with protocol 1 and 2 as it is too: SHORT_BINSTRING (``U``, its
# length a byte) or BINSTRING (``T``, four), memoized after it (BINPUT, LONG_BINPUT: cPickle's
# and pickle.py's, :data:`MEMO_PUT`); a Python 3 pickle of those protocols holds none (its
# ``bytes`` are ``_codecs.encode`` strings). Each of a size sought compared whole
# (:func:`_pickled_values`), in a pickle of protocol 2, or 1 (:func:`_binary_ops`); a short one
# (a thumbnail's sealed file) only where its length is one sought, each ``U`` and its length
# told with NumPy (:func:`_short_strs`: an expression of any length, a match each, took a third
# of the reading of a pickle of other bytes, one in 256 of them a ``U``, and most of that of a
# pickle of short strings), each hashed as it is, looked inside only where it may expand (through
# :func:`_part`, a pickle of millions of short strings, every size sought, took 10 us a value).
SHORT_BINSTRING = ord("U")
SHORT_REACH = 2 + SHORT_MAX + 5  # its opcode, its length and bytes, then a LONG_BINPUT
SHORT_CHUNK = 1 << 16  # bytes told at a time by :func:`_short_strs`
# What a pickler writes after each such value: it memoizes it (protocol 4 and up, MEMOIZE, in a
# frame of its own after one written outside frames, 64 KiB and up; protocol 3, BINPUT or
# LONG_BINPUT: :data:`MEMO_PUT`). A length found among other bytes is taken for a value only
# where that follows it (one in 256 does), so that where every size is sought (sizes not known)
# no long stretch of the file is hashed for nothing. A pickle written with its memo off
# (``Pickler.fast``, deprecated) is not read so.
MEMOIZED = re.compile(rb"\x94|\x95.{8}\x94", re.DOTALL)
# Protocol 2 (``torch.save``'s: a checkpoint's ``data.pkl``) has no opcode for bytes: it
# pickles them, a ``bytearray``'s and a NumPy array's too, as ``_codecs.encode(s, 'latin1')``:
# the GLOBAL ``_codecs encode`` (then memoized, BINPUT or LONG_BINPUT: :data:`MEMO_PUT`; later
# ones a memo's get, BINGET or LONG_BINGET, of its index), ``s`` the characters the bytes decode
# to as latin-1, a BINUNICODE of their UTF-8 (each byte from 0x80 up two: a photograph does not
# lie in it as it is; its length four bytes), then ``'latin1'`` (or a memo's get: the second
# such value of a pickle) and TUPLE2 (:data:`LATIN1_ARGS`, each optionally memoized). Found by
# ``bytes.find`` of the GLOBAL and of its gets (:func:`_latin1_strings`): a pickle without it
# holds no bytes so, and an expression beginning with either took 3.5 ns a byte.
CODECS_ENCODE = b"c_codecs\nencode\n"
MEMO_PUT = re.compile(rb"q(.)|r(.{4})", re.DOTALL)
# Either, in a file of pickles of protocol 3 and of 4 or 5, dumped one after another
# (:func:`_protocols`).
MEMO_ANY = re.compile(MEMOIZED.pattern + b"|" + MEMO_PUT.pattern, re.DOTALL)
# Where a pickle after the first begins, in a file of several: the last one's STOP, then its
# PROTO and protocol, 3, or 4 or 5 and the FRAME that begins every pickle of those of 4 bytes
# and more (its length under 4 GiB): found by one expression, in one pass over the file (0.06 s
# for 200 MiB; three bytes.find of each protocol's three bytes took 0.43 s). In other bytes
# (an array's) a protocol 3 is found one time in 16 MiB, which costs nothing more; a 4 or a 5,
# one in 2**56.
NEXT_PICKLE = re.compile(rb"\.\x80(?=\x03|[\x04\x05]\x95[\s\S]{4}\x00{4})")
NEXT_PICKLE_REACH = 12  # what NEXT_PICKLE reads from where it matches
BINUNICODE = b"X"
LATIN1_ARGS = re.compile(
    rb"(?:q.|r.{4})?(?:(?:X\x06\x00{3}latin1|U\x07latin-1)(?:q.|r.{4})?|h.|j.{4})\x86", re.DOTALL
)
# Gets of ``_codecs.encode`` sought each by a ``bytes.find`` of its own (a file of several
# pickles, each memoizing it at its own index); beyond so many, any get is sought
# (:data:`ANY_GET`), a BINUNICODE after it, an expression that took 3.5 ns a byte.
ENCODE_GETS_MAX = 8
ANY_GET = re.compile(rb"(?:h.|j.{4})X", re.DOTALL)
# Protocols 0 and 1 (``pickle.dump(..., protocol=0)``, Python 2's default) write no PROTO opcode:
# such a pickle is told by its first opcodes, read with pickletools (:func:`_old_pickle`): one of
# these first (a MARK, an empty dict, list or tuple, a GLOBAL, a value), none of protocol 2 and
# up, at least :data:`OLD_PICKLE_OPS` of them, all the bytes read being opcodes of such pickles
# one after another, the last cut off by their end (another file's bytes stop at their first
# few: an opcode unknown, an argument that is none; 45 in a million random 4 KiB, 0.3 us each).
OLD_PICKLE_FIRST = frozenset(b"(}])cNIJKMLFGSTUVXP")
OLD_PICKLE_OPS = 3
# Protocol 0 writes text (but for the bytes values it holds; all of it, Python 2's): a text is
# taken for one only where it begins as a container or an object does, with one opcode more
# (``NaN`` reads as three: NONE, APPEND, NONE), or as a STRING or UNICODE does (a ``str`` alone,
# the first of pickles one after another).
OLD_PICKLE_TEXT = frozenset(b"(}])cSV")
# A pickle of one long value (Python 2's ``pickle.dump(photo_bytes, f)``; a tuple of them) reads
# as fewer opcodes, the last cut off by the end of its first bytes: taken for one where that
# last is a STRING (a repr line: its quote, then printable ASCII, :data:`PRINTABLE`) or a
# BINSTRING (protocol 1, its bytes as they are) that begins as a photograph or a file holding
# others does (:func:`_long_string`), or a ``str`` (a caption, the first of a tuple): a UNICODE
# (a line of its characters, those under 256 as they are: no control character but a tab,
# :data:`UNICODE_LINE`) or a BINUNICODE (UTF-8, cut off only at its end).
OLD_LONG = frozenset(b"STVX")
PRINTABLE = bytes(range(0x20, 0x7F))
UNICODE_LINE = bytes(range(0x20, 0x100)) + b"\t"
BINSTRING_MAX = 1 << 31  # Python 2 wrote a longer ``str`` with no protocol 0 or 1 opcode
# Each ``bytes`` value is ``_codecs.encode(s, 'latin1')`` there too, ``s`` after a MARK and the
# arguments closed by TUPLE (``t``), not TUPLE2. Protocol 1: ``s`` a BINUNICODE of its UTF-8 (as
# protocol 2's, :data:`OLD_STRING_1`); protocol 0: an UNICODE, its characters as they are (each
# under 256: a byte) to the end of its line, the five a line would break (``\\``, NUL, LF, CR,
# ^Z) escaped as ``\\u005c``..., the only backslashes it holds (:data:`OLD_STRING_0`). Each found
# by its MARK and string opcode (protocol 0: the line's end before them), ``bytes.find`` of
# :data:`OLD_MARKS` (an expression of the heads took 5.6 ns a byte, the find a tenth), where a
# head lies before it, the GLOBAL or any memo's get, and the string's arguments follow it (a get
# of another callable with a string: its string decoded for nothing, once).
# Python 2 pickled a ``bytearray`` so too, ``bytearray(s, 'latin-1')`` (its ``__reduce__``):
# the GLOBAL ``__builtin__ bytearray`` (:data:`PY2_BYTEARRAY`), ``s`` a ``unicode`` (protocol
# 0: a line, only backslash and newline escaped; 1 and 2: a BINUNICODE of its UTF-8) and the
# ``str`` ``'latin-1'`` (``S'latin-1'``, ``U\x07latin-1``).
OLD_MARKS = {1: b"(X", 0: b"\n(V"}
PY2_BYTEARRAY = b"c__builtin__\nbytearray\n"
OLD_STRING_1 = re.compile(
    rb"(?:(?:c_codecs\nencode\n|c__builtin__\nbytearray\n)(?:q.|r.{4})?|h.|j.{4})\(X(.{4})",
    re.DOTALL,
)
OLD_ARGS_1 = re.compile(
    rb"(?:q.|r.{4})?(?:(?:X\x06\x00{3}latin1|U\x07latin-1)(?:q.|r.{4})?|h.|j.{4})t", re.DOTALL
)
OLD_STRING_0 = re.compile(
    rb"(?:(?:c_codecs\nencode\n|c__builtin__\nbytearray\n)(?:p\d{1,10}\n)?|g\d{1,10}\n)\(V"
)
OLD_ARGS_0 = re.compile(
    rb"(?:p\d{1,10}\n)?(?:(?:Vlatin1|S'latin-1')\n(?:p\d{1,10}\n)?|g\d{1,10}\n)t"
)
# Python 2's protocol 0 written on Windows in text mode (:func:`_old_pickle`): each line's end
# ``\r\n``, the heads' and arguments' (:func:`_old_crlf`) and the UNICODE's. A ``unicode`` line
# holds a CR as it is (only backslash and newline escaped), so a value's last CR and the line
# end's are told apart by the lines before its MARK: one of the head's, ending ``\r\n`` or not.
OLD_CRLF = {
    False: (OLD_STRING_0, OLD_ARGS_0, CODECS_ENCODE, PY2_BYTEARRAY),
    True: (
        re.compile(OLD_STRING_0.pattern.replace(rb"\n", rb"\r\n")),
        re.compile(OLD_ARGS_0.pattern.replace(rb"\n", rb"\r\n")),
        CODECS_ENCODE.replace(b"\n", b"\r\n"),
        PY2_BYTEARRAY.replace(b"\n", b"\r\n"),
    ),
}
ESCAPE = b"\\u0000"  # how long each escaped character is
# Python 2 pickled a ``str`` (a photograph read from its file, a NumPy array's data) with
# protocol 0 as a STRING: ``S``, its repr (quoted; each byte outside printable ASCII escaped,
# ``\\x89``, ``\\n``, ``\\'``) to its line's end, which Python 3 reads with
# ``codecs.escape_decode`` (``pickle.load(f, encoding="bytes")``, or ``"latin1"``): its bytes lie
# nowhere as they are. Each found by its opcode and quote (:func:`_string_values`), the first
# of its line only: an opcode with an argument ends its line, and before it on its line lie
# only opcodes without one, none an ``S``.
STRING_HEAD = re.compile(rb"S['\"]")
CR = ord("\r")
REPR_ESCAPE = len(b"\\x00")  # the longest escape: a repr is 1 to 4 characters a byte
# A PDF's header, where readers accept it: in its first kilobyte (after a mail's or a web
# server's lines), the file not text (its second line, by custom, of bytes above 127).
PDF_MAGIC, PDF_WITHIN = b"%PDF-", 1024
# How far a file's content may expand, all it holds inside read together (an archive's members,
# theirs, a table's columns): what a file of its size holds in earnest, however compressible
# (:data:`INSIDE_RATIO` times its size), and at least :data:`INSIDE_FLOOR`. Beyond that it is
# a bomb, or near enough: not read to its end (which its maker may put a day away) and not
# shown clean either (:class:`TooLarge`).
INSIDE_FLOOR = 4 << 30
INSIDE_RATIO = 100


class TooLarge(Exception):  # noqa: N818 - says what the file is, as ValueError does
    """A file whose content, read inside, expands beyond what its size allows (a zip bomb):
    nothing it holds is shown clean. Never one of
    :data:`~visage_ml.rights.embedded_archives.ARCHIVE_ERRORS`, which pass over a damaged
    archive's rest."""


class NotSpilled(TooLarge):
    """A member to look inside that could not be copied to its unnamed file (no room left, a
    private folder this user cannot write): nothing the file holding it holds is shown clean (a
    :class:`TooLarge`, so every caller that stops on one stops on this). Never one of
    :data:`~visage_ml.rights.embedded_archives.ARCHIVE_ERRORS`: an OSError there ended the
    archive's read as a damaged archive's does, and the member, and every one after it, passed
    as looked at."""


class DamagedMember(TooLarge):
    """A zip member that could not be read to its end (a broken deflate stream, a local header
    overwritten, a method not supported here), the members after it read: what ``unzip`` still
    extracts of it is not looked at, so nothing the archive holds is shown clean."""


class TooManyStarts(TooLarge):
    """A file holding more image starts than any file of images has (a PNG's or a JPEG's
    header, valid, repeated every few bytes:
    :data:`~visage_ml.rights.embedded_photos.STARTS_EVERY`): not walked from each to its end,
    which took minutes a gigabyte in every scan, and not shown clean either: a
    :class:`TooLarge`, so the erasure stops on it, doctor lists it as expands_inside and the
    verifier fails it."""


class _Budget:
    """What is left to read inside one file (:data:`INSIDE_FLOOR`, :data:`INSIDE_RATIO`)."""

    def __init__(self, size: int) -> None:
        self.left = max(INSIDE_FLOOR, INSIDE_RATIO * size)

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise TooLarge


# A part is known to be smaller than anything sought when nothing sought is smaller than this
# (asked size by size, once a scan: :func:`smallest_sought`).
FLOOR_PROBE = 4096
# How base64 of a compressed file begins (the first 12 bits of its magic number): "UE" a zip or
# a Parquet table... what such a file holds may be larger than itself, so it is looked inside
# whatever its size.
EXPANDS = (  # what such a file's first two bytes are
    b"PK",
    b"\x1f\x8b",
    b"\xfd7",
    b"BZ",
    b"PA",
    ZSTD_MAGIC[:2],
    LZ4_MAGIC[:2],
    *(b"\x78" + bytes((flag,)) for flag in b"\x01\x5e\x9c\xda"),
    b"\x5d\x00",
)
B64_EXPANDS = frozenset(base64.b64encode(m)[:2] for m in EXPANDS)
# The first two bytes of a part whose base64 begins so (:data:`B64_EXPANDS`: its first 12 bits,
# the first byte and the high half of the second), to tell it without encoding each part.
EXPANDS_PAIRS = frozenset(
    bytes((first, second | low))
    for first in range(256)
    for second in range(0, 256, 16)
    if base64.b64encode(bytes((first, second)))[:2] in B64_EXPANDS
    for low in range(16)
)


# The size of a key once unwrapped (an erased subject's data key, vault key, gallery key), sought
# by its exact size alone: a part of 32 bytes is hashed when :func:`keyed` says so, and the size
# does not lower :func:`smallest_sought` (a text of 48 bytes, a log's 64-digit hex decoded as
# base64, is no key and cannot hold one: base64 of a key is 43 characters and more, hex 64). The
# tombstones' :data:`~visage_ml.privacy.tombstones.KEY_SIZE`, written again so that the readers
# import no part of the privacy core.
KEY_SIZE = 32
# How many hex digits of a key's tag the file scan cache keeps for each part of a file that might
# have been one (:class:`~visage_ml.rights.scan_cache.Noted`; 48 bits: a log of 440,000
# SHA-256s against a million MACs is read again for nothing once in 600 scans).
KEY_MARK = 12


def smallest_sought(sizes: SizeFilter | None) -> int:
    """The size below which nothing is sought (asked of ``sizes`` up to :data:`FLOOR_PROBE`; 0
    when every size is, or ``sizes`` is None), but a key's (:data:`KEY_SIZE`, :func:`keyed`).
    A filter may carry its own (``smallest``)."""
    if sizes is None:
        return 0
    known = getattr(sizes, "smallest", None)
    if isinstance(known, int):
        return known
    return _smallest(sizes)


def _smallest(sizes: SizeFilter) -> int:
    return next(
        (n for n in range(FLOOR_PROBE) if n != KEY_SIZE and sizes.may_match(n)), FLOOR_PROBE
    )


def every_part(data: bytes) -> bool:
    """A key test that hashes every part of :data:`KEY_SIZE` bytes."""
    return True


def own_key_test(sizes: SizeFilter) -> Callable[[bytes], bool]:
    """``sizes``' own test of a part of :data:`KEY_SIZE` bytes (its ``key_test``), or
    :func:`every_part` for a filter without one."""
    make = getattr(sizes, "key_test", None)
    return every_part if make is None else make()


def key_test(sizes: SizeFilter | None) -> Callable[[bytes], bool] | None:
    """How to tell whether :data:`KEY_SIZE` bytes a file holds (a run of 64 hex digits or
    base64 decoded, an archive's member) are to be hashed, asked once a file and then of each
    such part: None when that size is not sought (``sizes.may_match``); else the filter's own
    test (``key_test``: an erased subject's key, one keyed hash each, so that a log's SHA-256s are
    tested, not hashed and kept), or every part (without ``sizes``, or a filter without one)."""
    if sizes is None:
        return every_part
    if not sizes.may_match(KEY_SIZE):
        return None
    return own_key_test(sizes)


def keyed(sizes: SizeFilter | None, data: bytes) -> bool:
    """Whether ``data``, :data:`KEY_SIZE` bytes, is to be hashed (:func:`key_test`)."""
    test = key_test(sizes)
    return test is not None and test(data)


class Floored:
    """``sizes`` asked once a size, with :func:`smallest_sought` worked out once: one scan's
    filter, shared by every file it reads (threads may each ask a size; the answer is the
    same). What is sought is what it was when the scan began: a table's every value, a text's
    every run, is asked of it, and each asking reads the tombstones' state."""

    def __init__(self, sizes: SizeFilter) -> None:
        self.sizes = sizes
        self._asked: dict[int, bool] = {}
        self._key_test: Callable[[bytes], bool] | None = None

    def may_match(self, size: int) -> bool:
        known = self._asked.get(size)
        if known is None:
            known = self._asked[size] = self.sizes.may_match(size)
        return known

    def key_test(self) -> Callable[[bytes], bool]:
        """:func:`own_key_test` of ``sizes``, made once (asked of every 32-byte part: a table's
        every value)."""
        if self._key_test is None:
            self._key_test = own_key_test(self.sizes)
        return self._key_test

    def key_tagger(self) -> tuple[Callable[[bytes], str], frozenset[str]] | None:
        """``sizes``' tag of a key's 32 bytes and the tags sought, when it has them
        (:class:`~visage_ml.rights.scan_cache.Noted` keeps what it tags)."""
        make = getattr(self.sizes, "key_tagger", None)
        return None if make is None else make()

    @property
    def key_marks(self) -> frozenset[str] | None:
        """``sizes``' marks of what is sought, to check a file cache's tags against."""
        return getattr(self.sizes, "key_marks", None)

    # Worked out when first asked, then an attribute: asked of each part (a table's every
    # value, a text's every run), and a property was a call each time.
    @functools.cached_property
    def smallest(self) -> int:
        return _smallest(self)


class SizeFilter(Protocol):
    """What is sought, by size (:class:`~visage_ml.rights.content_hashes.ContentHashes`)."""

    def may_match(self, size: int) -> bool: ...


def _text(first: bytes) -> bool:
    """UTF-8 without a NUL (its last character may be cut off where ``first`` ends)."""
    if not first or b"\x00" in first:
        return False
    try:
        first.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data" and exc.start >= len(first) - 3
    return True


def kind(first: bytes) -> str | None:
    """What a file beginning with ``first`` is, as far as what it may hold goes; None: nothing
    looked inside (an image, a sealed file, a binary format not listed)."""
    if (what := _magic_kind(first)) is not None:
        return what
    if first.startswith(NPY_MAGIC) or PICKLE_MAGIC.match(first):
        return BINARY
    if embedded_formats.holds_as_is(first):  # Arrow, HDF5, LMDB, TFRecord: read as an array is
        return BINARY
    if embedded_utf16.codec(first) is not None:
        return UTF16
    text = _text(first)
    # After the formats above (an HDF5 file's user block may be zeros); never a text's (a
    # header holds NULs): a text of octal numbers is read as text. A pickle of protocol 0 or 1
    # is told before a header's numeric fields alone are: its first value a long number or
    # string of octal digits, a memo's index or a length's NULs before it, reads as them.
    return _tar_or_old_pickle(first, text) or (TEXT if text else None)


def _tar_or_old_pickle(first: bytes, text: bool) -> str | None:
    """:data:`TAR` or :data:`BINARY` (a pickle of protocol 0 or 1, :func:`_old_pickle`) for
    ``first``, told in that order: a tar by its zeros, a header's magic or checksum, then such a
    pickle by its opcodes, then a tar by a header's numeric fields alone (never a text's)."""
    told = 0 if text else _tar_told(first)
    if told == 2:
        return TAR
    if _old_pickle(first, text=text):
        return BINARY
    return TAR if told else None


def _also_tar(first: bytes) -> bool:
    """Whether a file told a pickle (:data:`BINARY`) by its first bytes ``first`` is read as a
    tar too: a block of them bears a header (:func:`_tar_blocks`) and they begin as a pickle
    does (:data:`PICKLE_MAGIC`, :func:`_old_pickle`). A tar whose first header is damaged (its
    magic lost, its checksum wrong: ``tar -x`` skips to the next) and whose first member's name
    reads as a pickle's first opcodes (``(lp0\\nS'...``, its line run on through the header and
    a first member of no newline; ``\\x80\\x02``) is one, and so is a pickle whose first value
    reads as a header's numbers (:func:`kind`): no 4 KiB tell the one from the other, so both
    are read (the tar's blocks searched for a header at NumPy's pace, then its members)."""
    return _tar_blocks(first) and (PICKLE_MAGIC.match(first) is not None or _old_pickle(first))


def _old_pickle(first: bytes, *, text: bool = False) -> bool:
    """Whether ``first`` begins a pickle of protocol 0 or 1 (:data:`OLD_PICKLE_FIRST`,
    :data:`OLD_PICKLE_OPS`; ``text``: ``first`` is text, :data:`OLD_PICKLE_TEXT`; fewer opcodes
    where the last is a long string cut off, :func:`_long_string`), its lines' ends ``\n`` or
    ``\r\n`` (Python 2's protocol 0 written on Windows in text mode: each ``\n`` written so,
    which reading in text mode undoes)."""
    if not first or first[0] not in (OLD_PICKLE_TEXT if text else OLD_PICKLE_FIRST):
        return False
    return _old_opcodes(first, text) or (
        b"\r\n" in first and _old_opcodes(first.replace(b"\r\n", b"\n"), text)
    )


def _old_opcodes(first: bytes, text: bool) -> bool:
    """:func:`_old_pickle` of ``first`` as it is."""
    begins, ops = (
        (OLD_PICKLE_TEXT, OLD_PICKLE_OPS + 1) if text else (OLD_PICKLE_FIRST, OLD_PICKLE_OPS)
    )
    if not first or first[0] not in begins:
        return False
    fh, n, size = io.BytesIO(first), 0, len(first)
    try:
        # Pickles one after another (rows dumped one by one), each to its STOP.
        while (op := _OLD_OPCODES.get(fh.read(1))) is not None:
            n += 1
            at = fh.tell()
            if op.arg is not None:
                _OLD_READERS.get(op.arg, op.arg.reader)(fh)
    except ValueError:  # an argument that is none, unless cut off by the end
        if fh.tell() < size:
            return False
        return n >= ops or (first[at - 1] in OLD_LONG and _long_string(first, at))
    return fh.tell() >= size and n >= ops  # no more bytes, or one that is no such opcode


def _long_string(first: bytes, at: int) -> bool:
    """Whether the STRING, BINSTRING, UNICODE or BINUNICODE whose opcode lies before ``at`` in
    ``first``, cut off by its end, is a string pickled (:data:`OLD_LONG`)."""
    op = first[at - 1 : at]
    if op == b"S":  # its repr: its quote, then printable ASCII
        return first[at : at + 1] in (b"'", b'"') and not first[at + 1 :].translate(None, PRINTABLE)
    if op == b"V":
        return not first[at:].translate(None, UNICODE_LINE)
    n = int.from_bytes(first[at : at + 4], "little")
    if n >= BINSTRING_MAX:
        return False
    if op == b"X":
        return _text(first[at + 4 :].replace(b"\x00", b" "))
    from visage_ml.rights.embedded_photos import JPEG_MAGIC, PNG_MAGIC

    held = first[at + 4 :]  # not asked whether it is such a pickle: no chain of them
    return held.startswith((PNG_MAGIC, JPEG_MAGIC)) or (
        PICKLE_MAGIC.match(held) is not None or _magic_kind(held) is not None
    )


# A line's argument (a STRING's, a GLOBAL's) read without decoding its escapes: pickletools'
# ``escape_decode`` warns of a bad one, which other bytes are full of.
_LINE = functools.partial(pickletools.read_stringnl, decode=False, stripquotes=False)
# A GLOBAL's (an INST's) module and name: dotted identifiers (``class Foo:`` then a line of code
# read as one).
_DOTTED = re.compile(rb"[A-Za-z_][\w.]*")


def _global(fh: IO[bytes]) -> None:
    """Read a GLOBAL's two lines from ``fh``; ValueError where they are no module and name."""
    for _ in range(2):
        if _DOTTED.fullmatch(_LINE(fh)) is None:
            raise ValueError("no module or name")


_OLD_READERS: dict[Any, Callable[[IO[bytes]], object]] = {
    pickletools.stringnl: functools.partial(pickletools.read_stringnl, decode=False),
    pickletools.stringnl_noescape: _LINE,
    pickletools.stringnl_noescape_pair: _global,
}
# The opcodes of protocols 0 and 1, by their byte (:func:`_old_pickle`).
_OLD_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes if op.proto <= 1}


def _tar_blocks(first: bytes) -> bool:
    """Whether a file beginning with ``first`` (no tar's magic at byte 257) may be a tar GNU tar
    reads members of (:data:`TAR_BLOCK`): its first block zeros, or a block of ``first`` bearing
    a header (:func:`_tar_header`)."""
    return _tar_told(first) > 0


def _tar_told(first: bytes) -> int:
    """:func:`_tar_blocks` told in one pass: 2 where ``first`` begins with zeros or a block of it
    bears a header's magic or checksum, 1 where its numeric fields alone, 0 where none."""
    if len(first) < TAR_NUMBERS[-1][1]:  # no block's zeros, checksum nor numeric fields
        return 0
    if first[:TAR_BLOCK] == bytes(TAR_BLOCK):
        return 2
    start, end, told = *TAR_NUMBERS[0][:2], 0
    for at in range(0, len(first), TAR_BLOCK):
        # A header bears its mode in octal (every tar writes it so; tarfile reads no header
        # whose mode is no number), or its magic: other bytes seldom do (a block of random
        # bytes is told in 0.4 us).
        if (
            first[at + start : at + end].translate(None, TAR_OCTAL)
            and first[at + TAR_AT : at + TAR_AT + len(TAR_MAGIC)] != TAR_MAGIC
        ):
            continue
        told = max(told, _tar_header(first, at))
        if told == 2:
            break
    return told


def _tar_header(first: bytes, at: int) -> int:
    """Whether the block of ``first`` at ``at`` bears a header: 2 by a header's whole magic
    (:data:`TAR_MAGICS`; past the first block, where :func:`_magic_kind` looks) or its checksum
    (:func:`_tar_checksummed`: a V7 header, or one of large numbers in base 256), 1 by its
    numeric fields as tar writes them alone (:func:`_tar_numbers`), 0 not."""
    if at and first[at + TAR_AT : at + TAR_AT + len(TAR_MAGICS[0])] in TAR_MAGICS:
        return 2
    block = first[at : at + TAR_BLOCK]
    return 2 if _tar_checksummed(block) else int(_tar_numbers(block))


def _tar_checksummed(block: bytes) -> bool:
    """Whether ``block`` is a header by its checksum, as GNU tar and tarfile tell one whatever
    its magic (a V7 tar has none): the octal number in its checksum field (:data:`TAR_CHECKSUM`,
    its digits between white space and NULs, as every tar writes it) the sum of its bytes with
    that field taken for spaces, unsigned or signed (tarfile's own reading, ``nti`` and
    ``calc_chksums``)."""
    field = block[TAR_CHECKSUM]
    if len(block) < TAR_BLOCK or not _tar_octal(field):
        return False
    try:
        return tarfile.nti(field) in tarfile.calc_chksums(block)
    except tarfile.HeaderError:
        return False


def _tar_octal(field: bytes) -> bool:
    """Whether ``field`` is a number as tar writes it in octal (digits between white space and
    NULs)."""
    return not field.translate(None, TAR_OCTAL) and bool(field.translate(None, TAR_BLANK))


def _tar_numbers(block: bytes) -> bool:
    """Whether ``block`` (its first bytes at least) bears a header's numeric fields as tar writes
    them (:data:`TAR_NUMBERS`), with a NUL among them or before: a header whose magic or
    checksum was damaged is still told one."""
    head = block[: TAR_NUMBERS[-1][1]]
    if len(head) < TAR_NUMBERS[-1][1]:
        return False
    for start, end, digit, base256 in TAR_NUMBERS:  # the mode first: no base 256
        field = head[start:end]
        if base256 and field[0] in TAR_BASE256:
            continue
        if not (_tar_octal(field) if digit else not field.translate(None, TAR_OCTAL)):
            return False
    return b"\x00" in head


def _magic_kind(first: bytes) -> str | None:
    """:func:`kind` of an archive, a compressed stream, a table or a PDF, told by its magic
    number (a PDF's header within its first kilobyte of bytes that are no text)."""
    if first.startswith(ZIP_MAGIC):
        return ZIP
    if first[TAR_AT : TAR_AT + len(TAR_MAGIC)] == TAR_MAGIC:
        return TAR
    if stream_kind(first) is not None:
        return COMPRESSED
    if first.startswith(PARQUET_MAGIC):
        return PARQUET
    if first.startswith((SQLITE_MAGIC, *SQLITE_WAL_MAGIC, SQLITE_JOURNAL_MAGIC)):
        return SQLITE
    if first.startswith(PDF_MAGIC) or (PDF_MAGIC in first[:PDF_WITHIN] and not _text(first)):
        return PDF
    return None


def stream_kind(first: bytes) -> str | None:
    """Which compressed stream a part beginning with ``first`` is (:data:`GZIP`, :data:`XZ`,
    :data:`BZIP2`, :data:`ZSTD`, :data:`LZ4`, :data:`ZLIB`, :data:`LZMA_ALONE`), None for
    none."""
    if first.startswith(COMPRESSED_MAGIC[0]):
        return GZIP
    if first.startswith(COMPRESSED_MAGIC[1]):
        return XZ
    if BZIP2_MAGIC.match(first):
        return BZIP2
    if first.startswith(ZSTD_MAGIC):
        return ZSTD
    if first.startswith(LZ4_MAGIC):
        return LZ4
    if ZLIB_MAGIC.match(first) and _decompresses(zlib.decompressobj(), first):
        return ZLIB
    if first.startswith(LZMA_ALONE_MAGIC) and len(first) >= 13:
        dictionary = int.from_bytes(first[1:5], "little")
        if dictionary in _LZMA_DICTIONARIES and _decompresses(
            lzma.LZMADecompressor(lzma.FORMAT_ALONE), first
        ):
            return LZMA_ALONE
    return None


# A dictionary an LZMA encoder writes: 2 ** n or 3 * 2 ** (n - 1) bytes, from 4 KiB to 1.5 GiB.
_LZMA_DICTIONARIES = frozenset(size for n in range(12, 31) for size in (1 << n, 3 << (n - 1)))


def _decompresses(decompressor: Any, first: bytes) -> bool:
    """Whether ``first``, no text, is the start of what ``decompressor`` reads (a few KiB of
    what it gives, at most)."""
    if _text(first):
        return False
    try:
        decompressor.decompress(first, 1 << 16)
    except (zlib.error, lzma.LZMAError, EOFError, ValueError, MemoryError):
        return False
    return True


def spill_into(project: Path) -> None:
    """Members spilled out of memory go to the private folder of the project at ``project``
    (:data:`SPILL_FOLDER`, 0700) from now on, in this process: they are its content,
    decompressed (each file has no name, and goes when closed, or with the process)."""
    global SPILL_DIR
    SPILL_DIR = private_dir(Path(project) / SPILL_FOLDER)


def passed_over(sizes: SizeFilter | None, size: int) -> None:
    """Tell ``sizes`` that a part of ``size`` bytes was passed over as smaller than anything
    sought, when it keeps count (``passed_over``: a read whose findings are kept for a later
    scan, which may seek something that small, :class:`~visage_ml.rights.scan_cache.Noted`)."""
    note = getattr(sizes, "passed_over", None)
    if note is not None:
        note(size)


def _digest(data: bytes, sizes: SizeFilter | None) -> list[str]:
    if len(data) == KEY_SIZE:
        return [hashlib.sha256(data).hexdigest()] if keyed(sizes, data) else []
    return [hashlib.sha256(data).hexdigest()] if sizes is None or sizes.may_match(len(data)) else []


# kind() of so many first bytes of parts is remembered at most (:func:`_told`: under 1 MiB).
TOLD_MAX = 4096


def _told(first: bytes, told: dict[bytes, str | None] | None) -> str | None:
    """:func:`kind` of ``first``, remembered in ``told`` (when given) by a 16-byte BLAKE2b
    digest of its bytes (4 KiB kept each would make 16 MiB a level of nesting), up to
    :data:`TOLD_MAX` of them (then forgotten): the stretches a file's JPEGs give
    (:func:`_photographs`), each JPEG alone and in the runs of those after it, are often alike
    (a crafted file's every one), and kind() of each took two thirds of reading them."""
    if told is None:
        return kind(first)
    key = hashlib.blake2b(first, digest_size=16).digest()
    what = told.get(key, told)
    if what is told:
        if len(told) >= TOLD_MAX:
            told.clear()
        what = told[key] = kind(first)
    return what  # type: ignore[return-value]


def _part(
    data: bytes,
    sizes: SizeFilter | None,
    depth: int,
    budget: _Budget,
    told: dict[bytes, str | None] | None = None,
) -> Iterator[str]:
    """A file held inside another: its SHA-256, and what it holds itself; nothing when smaller
    than anything sought and not compressed (a text, a pickle, a tar holds only what is smaller
    than itself: a table's short strings), but for a key's 32 bytes (:func:`keyed`), printed
    (:func:`key_texts`) or a ``.npy``'s array (:func:`_npy_key`). ``told``: kind() remembered
    (:func:`_told`)."""
    if len(data) == KEY_SIZE:
        yield from _digest(data, sizes)
        return
    if len(data) < smallest_sought(sizes) and bytes(data[:2]) not in EXPANDS_PAIRS:
        passed_over(sizes, len(data))
        yield from key_texts(data, sizes, depth, budget)
        yield from _npy_key(data, sizes)
        return
    yield from _digest(data, sizes)
    if depth < DEPTH and (what := _told(data[:SNIFF], told)) is not None:
        yield from inside(data, what, sizes=sizes, depth=depth + 1, budget=budget)


# The fewest characters a key's 32 bytes are printed in (base64 without its padding), and where
# one may be printed: 64 hex digits in a row, or embedded_text.B64_KEY (as it is), or a run of
# 46 letters so bounded (base64 of the key DER-wrapped, embedded_text.DER_KEY), or 52 letters of
# base32 (embedded_text.B32_KEY_CHARS) no more in a row: a superset of what embedded_text._keys
# finds, searched first so that a table's labels and names cost no call (the base32 alternative:
# 0.41 s against 0.33 s for 200,000 values of labels, hex names and letters).
KEY_TEXT_MIN = 43
_HEX64 = re.compile(rb"[0-9A-Fa-f]{64}")
_KEY_LIKE = re.compile(
    rb"[0-9A-Fa-f]{64}|"
    rb"(?:(?<![A-Za-z0-9+/_\\-])|(?<=\\[nrt]))[A-Za-z0-9+/_-]{43}(?:[A-Za-z0-9+/_-]{3})?"
    rb"(?:=|(?![A-Za-z0-9+/_=-]))|"
    rb"(?<![A-Z2-7])[A-Z2-7]{52}(?![A-Z2-7])"
)


def key_texts(data: bytes, sizes: SizeFilter | None, depth: int, budget: _Budget) -> Iterator[str]:
    """The keys printed in ``data``, a part too short to be looked inside (:func:`_part`: a
    table's value, an archive's member) that is text: each run of 64 hex digits or of a key's
    base64 (either alphabet; DER-wrapped too) or base32 decoded and tested as :func:`_part` tests
    :data:`KEY_SIZE` bytes. An operator's table of the keys they unwrapped (a column of
    ``key.hex()`` or base64, a JSON value holding one) is no text file, whose printed keys
    :func:`inside` finds; a part is text here when its first bytes are UTF-8 without a NUL
    (:func:`kind`'s other tests cost a table of a million SHA-256s in hex 8 s). ``sizes`` is
    asked (:func:`key_test`) at the first run that may be a key, as a text's runs ask it, so
    that a table of names and labels leaves the scan cache no note of a key's size."""
    if len(data) < KEY_TEXT_MIN:
        return
    data = bytes(data)
    # Most values hold no run as long as a key's (a label, a name): let go without a call.
    if _KEY_LIKE.search(data) is None or not _text(data[:SNIFF]):
        return
    if len(data) == 64 and _HEX64.fullmatch(data):  # a column of them, a SHA-256 each row
        if (test := key_test(sizes)) is not None and test(raw := bytes.fromhex(data.decode())):
            yield from _part(raw, sizes, depth, budget)
        return
    from visage_ml.rights import embedded_text  # it imports this module

    test: Callable[[bytes], bool] | None = None
    asked = False
    for start, end in embedded_text._run_spans(data):
        if end - start < KEY_TEXT_MIN:
            continue
        for _, raw in embedded_text._keys(data, start, end):
            if not asked:
                test, asked = key_test(sizes), True
            if test is None:
                return
            if test(raw):
                yield from _part(raw, sizes, depth, budget)


def inside(
    data: bytes,
    what: str,
    *,
    sizes: SizeFilter | None = None,
    depth: int = 0,
    budget: _Budget | None = None,
) -> Iterator[str]:
    """The SHA-256 of each file ``data`` (a file of kind ``what``, :func:`kind`) holds inside,
    to :data:`DEPTH`; with ``sizes``, only those of a size it may match.

    Raises
    ------
    TooLarge
        When what it holds expands beyond what its size allows (``budget``: that of the file
        it lies in, else its own).
    """
    budget = budget if budget is not None else _Budget(len(data))
    if what in STREAMED:
        yield from inside_file(io.BytesIO(data), what, sizes=sizes, depth=depth, budget=budget)
    elif what == PARQUET:
        from visage_ml.rights import embedded_tables

        yield from embedded_tables._parquet(data, sizes, depth, budget)
    elif what == SQLITE:
        from visage_ml.rights import embedded_db  # it reads a table's values as _part does

        yield from embedded_db.inside_db(data, sizes=sizes, depth=depth, budget=budget)
    elif what == UTF16:
        text = embedded_utf16.utf8_of(data)
        yield from inside(text, TEXT, sizes=sizes, depth=depth, budget=budget)
    else:
        from visage_ml.rights import embedded_text

        for _, raw in embedded_text._runs(data, sizes):
            yield from _part(raw, sizes, depth, budget)
        yield from _pickled(data, what, sizes, depth, budget)
        if what == BINARY:
            yield from _npy_key(data, sizes)
        if what in (BINARY, PDF):
            yield from _photographs(data, sizes, depth, budget)
        yield from _compressed(data, what, sizes, depth, budget)
        if what == BINARY and _also_tar(data[:SNIFF]):
            yield from inside_file(io.BytesIO(data), TAR, sizes=sizes, depth=depth, budget=budget)


def _pickled(
    data: Buffer, what: str, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """What ``data``, a file of kind ``what``, holds as a pickle's bytes beyond what lies in it
    as it is: :func:`_part` of the 32 bytes after each opcode of :data:`PICKLED_KEY` that are a
    key sought (:func:`key_test`: the opcodes' two bytes found in other bytes too, an array's
    floats, are tested and let go, about one every 64 KiB), and in a checkpoint of torch's
    legacy format after each element count of :data:`TORCH_STORAGE_KEY`; of each value of a
    size sought, whole (:func:`_pickled_values`), and of protocol 2's bytes
    (:func:`_latin1_strings`) what they would give in one of protocol 3: a key sought, the value
    whole when of a size sought (:func:`_latin1_sought`), each PNG and JPEG
    (:func:`_photographs`). Only those a key's size
    could be, of a size sought, or in which a PNG's or a JPEG's signature lies
    (:func:`_signed`), are decoded (:func:`_latin1_bytes`: UTF-8 decoding took 3 ns a byte,
    most of the reader's time, and a pickle of a data set's features holds little else); of
    those smaller than anything sought, none. A pickle of protocol 0 or 1: its strings of
    either (:func:`_old_pickled`). Then, of any protocol, a key sought printed as a string
    (:func:`~visage_ml.rights.embedded_pickled_keys._printed_keys`)."""
    from visage_ml.rights.embedded_pickled_keys import _printed_keys  # it imports this module

    if what != BINARY:
        return
    begins = _npy_pickle(data)
    if not PICKLE_MAGIC.match(data[begins : begins + 2]):
        if _old_pickle(bytes(data[:SNIFF])):
            yield from _old_pickled(data, sizes, depth, budget)
            yield from _printed_keys(data, sizes, depth, budget)
        return
    test = key_test(sizes)
    if test is not None:
        yield from _keys_after(data, PICKLED_KEY, test, sizes, depth, budget)
        if bytes(data[: len(TORCH_LEGACY_MAGIC)]) == TORCH_LEGACY_MAGIC:
            yield from _keys_after(data, TORCH_STORAGE_KEY, test, sizes, depth, budget)
    floor, protocols = smallest_sought(sizes), _protocols(data, begins)
    yield from _pickled_values(data, sizes, depth, budget, floor, protocols)
    yield from _latin1_values(data, _latin1_strings(data), sizes, depth, budget, floor)
    yield from _printed_keys(data, sizes, depth, budget)


def _keys_after(
    data: Buffer,
    head: re.Pattern[bytes],
    test: Callable[[bytes], bool],
    sizes: SizeFilter | None,
    depth: int,
    budget: _Budget,
) -> Iterator[str]:
    """:func:`_part` of the :data:`KEY_SIZE` bytes after each match of ``head`` (an opcode and
    its length, a storage's element count) that are a key sought (``test``)."""
    for m in head.finditer(data):
        raw = bytes(data[m.end() : m.end() + KEY_SIZE])
        if len(raw) == KEY_SIZE and test(raw):
            yield from _part(raw, sizes, depth, budget)


def _npy_pickle(data: Buffer) -> int:
    """Where the pickle of a ``.npy`` file's object array begins (``np.save`` of one: its
    header, then the array pickled, :data:`NPY_HEADER`); 0 for another file (a pickle's is
    its start)."""
    head, end = _npy_header(data)
    return end if end and NPY_HEADER.search(bytes(data[head:end])) is not None else 0


def _npy_header(data: Buffer) -> tuple[int, int]:
    """Where a ``.npy`` file's header begins and ends (its magic, version and length before it;
    the array after it); (0, 0) for another file."""
    if bytes(data[: len(NPY_MAGIC)]) != NPY_MAGIC or len(data) < len(NPY_MAGIC) + 6:
        return 0, 0
    width = 2 if data[len(NPY_MAGIC)] == 1 else 4
    head = len(NPY_MAGIC) + 2 + width
    return head, head + int.from_bytes(data[head - width : head], "little")


def _npy_key(data: Buffer, sizes: SizeFilter | None) -> list[str]:
    """A key sought as a ``.npy`` file's whole array (``np.save(f, np.frombuffer(key,
    np.uint8))``, or those bytes as another dtype; alone, or an ``.npz``'s member): the array's
    buffer after the header, where it is exactly :data:`KEY_SIZE` bytes, tested as :func:`_part`
    tests a part of that size (the file, 160 bytes, is smaller than anything sought)."""
    _, end = _npy_header(data)
    if not end or len(data) - end != KEY_SIZE:
        return []
    return _digest(bytes(data[end:]), sizes)


def _latin1_values(
    data: Buffer,
    spans: Iterable[tuple[int, int]],
    sizes: SizeFilter | None,
    depth: int,
    budget: _Budget,
    floor: int,
) -> Iterator[str]:
    """What the strings of ``_codecs.encode(s, 'latin1')`` in ``data`` give (``spans``: where
    each one's UTF-8 lies, in order): :func:`_part` of a key sought, the value whole when of a
    size sought, each PNG and JPEG it holds, the files it holds when it is one that holds others
    (:func:`_pickled`)."""
    test, signed = key_test(sizes), _signed(data)
    for start, end in spans:
        # a key's 32 bytes are 32 to 64 of UTF-8
        if test is not None and KEY_SIZE <= end - start <= 2 * KEY_SIZE:
            raw = _pickled_bytes(data, start, end)
            if raw is not None and len(raw) == KEY_SIZE and test(raw):
                yield from _part(raw, sizes, depth, budget)
        whole, photos = _latin1_sought(data, start, end, sizes, floor), signed(start, end)
        files = not whole and _latin1_holds_files(data, start, end, depth, floor)
        if not whole and not photos and not files:
            continue
        if not whole and not files and end - start < floor:  # what it holds is smaller still
            passed_over(sizes, end - start)
            continue
        budget.spend(end - start)
        with _latin1_bytes(data, start, end) as held:
            if held is None:
                continue
            if whole:
                yield from _value(held, 0, len(held), sizes, depth, budget)
            elif files:
                yield from _nested(held, 0, len(held), sizes, depth, budget, floor)
            if photos:
                yield from _photographs(held, sizes, depth, budget)


def _old_pickled(
    data: Buffer, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """What ``data``, a pickle of protocol 0 or 1 (:func:`_old_pickle`), holds as ``bytes``
    values: Python 2's ``str`` of protocol 1 (:func:`_pickled_values`), its protocol-1 strings'
    as protocol 2's (:func:`_latin1_values`), then its
    protocol-0 strings' (:func:`_unicode_values`), then Python 2's ``str`` values
    (:func:`_string_values`)."""
    floor = smallest_sought(sizes)
    if _binary_ops(bytes(data[:SNIFF])):  # Python 2's protocol 1: its ``str`` values
        yield from _pickled_values(data, sizes, depth, budget, floor, {1})
    ones = ((start, end) for start, end, _ in _old_strings(data, 1))
    yield from _latin1_values(data, ones, sizes, depth, budget, floor)
    yield from _unicode_values(data, sizes, depth, budget, floor)
    yield from _string_values(data, sizes, depth, budget, floor)


def _binary_ops(first: bytes) -> bool:
    """Whether the opcodes ``first`` begins with (:func:`_old_pickle`) are of protocol 1, one
    of them at least (a BINPUT after the first container, a BINSTRING): a pickle of protocol 0
    holds no BINSTRING, and is not searched for one."""
    fh = io.BytesIO(first)
    with contextlib.suppress(ValueError):
        while (op := _OLD_OPCODES.get(fh.read(1))) is not None:
            if op.proto == 1:
                return True
            if op.arg is not None:
                _OLD_READERS.get(op.arg, op.arg.reader)(fh)
    return False


def _old_strings(data: Buffer, protocol: int) -> Iterator[tuple[int, int, int]]:
    """Where each string ``s`` of a ``_codecs.encode(s, 'latin1')`` lies in ``data``, a pickle
    of ``protocol`` 0 or 1, in order, none within another, and where its arguments end: each
    MARK and string opcode found (:data:`OLD_MARKS`), a head before it (:func:`_old_head`) and
    the string's arguments after it. A protocol-1 string's end is its length's, a protocol-0
    one's its line's end (found before the next MARK's own line end: linear however crafted).
    No more heads that begin no string are tried than image starts a file of its size holds
    (:class:`TooManyStarts`: a crafted file of them took 0.3 us a byte)."""
    from visage_ml.rights.embedded_photos import _starts_allowed

    mark, args = OLD_MARKS[protocol], OLD_ARGS_1
    done, size, at, allowed = 0, len(data), 0, _starts_allowed(data)
    while (pos := _find(data, mark, at)) >= 0:
        at = pos + 1
        crlf = not protocol and pos > 0 and data[pos - 1] == CR  # written on Windows
        if (m := _old_head(data, pos, protocol, done, crlf)) is None:
            continue
        start = m.end()
        if protocol:  # its length before it
            end = after = start + int.from_bytes(m[1], "little")
        else:  # its line's end after it
            end = _find(data, b"\n", start)
            after, args = end + 1, OLD_CRLF[crlf][1]
            if crlf and end >= start:  # the line end's CR; one before it is the value's
                end = end - 1 if data[end - 1] == CR else -1
        if not start <= end <= size or (tail := args.match(data, after)) is None:
            allowed -= 1  # a head that begins no string: crafted, past a few
            if allowed < 0:
                raise TooManyStarts
            continue
        done = at = tail.end()
        yield start, end, done


def _old_head(
    data: Buffer, pos: int, protocol: int, lo: int, crlf: bool = False
) -> re.Match[bytes] | None:
    """The head (:data:`OLD_STRING_1`, :data:`OLD_STRING_0`) of the protocol-``protocol`` string
    whose MARK lies at ``pos`` (:data:`OLD_MARKS`), begun at ``lo`` or after: tried where a get
    (``h``, ``j``; ``g`` and its digits) or the GLOBAL (memoized or not) would begin, a few
    places; ``crlf``: its lines' ends ``\r\n`` (:data:`OLD_CRLF`)."""
    if protocol:
        string, tail = OLD_STRING_1, pos + len(OLD_MARKS[1]) + 4
        starts: tuple[int, ...] = (pos - 2, pos - 5, pos - 16, pos - 18, pos - 21)
        starts += (pos - 23, pos - 25, pos - 28)  # after PY2_BYTEARRAY
    else:
        (string, _, encode, bytearray_), tail = OLD_CRLF[crlf], pos + len(OLD_MARKS[0])
        starts = (  # each line's CR one byte more
            data.rfind(b"g", max(lo, pos - 11 - crlf), pos),
            data.rfind(encode, max(lo, pos - 27 - 3 * crlf), pos + 1),
            data.rfind(bytearray_, max(lo, pos - 34 - 3 * crlf), pos + 1),
        )
    for at in starts:
        if at >= lo and (m := string.match(data, at, tail)) is not None and m.end() == tail:
            return m
    return None


def _unicode_values(
    data: Buffer, sizes: SizeFilter | None, depth: int, budget: _Budget, floor: int
) -> Iterator[str]:
    """What the protocol-0 strings of ``_codecs.encode(s, 'latin1')`` in ``data`` give
    (:func:`_old_strings`): as many bytes as ``s`` has characters (each escaped one
    :data:`ESCAPE` long), decoded only where that is a key's size (a key sought: :func:`_part`)
    or not smaller than anything sought: then the value whole when of a size sought, each PNG
    and JPEG it holds, the files it holds (:func:`_nested`). One over :data:`EMBED_MAX` is
    hashed a :data:`CHUNK` at a time when of a size sought, not looked inside."""
    from visage_ml.rights import embedded_photos

    test = key_test(sizes)
    for start, end, _ in _old_strings(data, 0):
        if end - start > EMBED_MAX:
            yield from _unicode_hashed(data, start, end, sizes, budget)
            continue
        text = bytes(data[start:end])
        n = len(text) - (len(ESCAPE) - 1) * text.count(b"\\")
        key = test is not None and n == KEY_SIZE
        if n < floor and not key:
            passed_over(sizes, n)
            continue
        raw = _latin1(lambda t=text: t.decode("raw_unicode_escape"))
        if raw is None:  # a character above 255: a string, not bytes
            continue
        budget.spend(len(raw))
        if key:
            if test(raw):
                yield from _part(raw, sizes, depth, budget)
            continue
        if sizes is None or sizes.may_match(n):
            yield from _part(raw, sizes, depth, budget)
        else:
            yield from _nested(raw, 0, len(raw), sizes, depth, budget, floor)
        if embedded_photos.PNG_MAGIC in raw or embedded_photos.JPEG_MAGIC in raw:
            yield from _photographs(raw, sizes, depth, budget)


def _unicode_hashed(
    data: Buffer, start: int, end: int, sizes: SizeFilter | None, budget: _Budget
) -> Iterator[str]:
    """The SHA-256 of the bytes a protocol-0 string over :data:`EMBED_MAX` gives
    (:func:`_unicode_values`) when ``sizes`` may seek their size, decoded a :data:`CHUNK` at a
    time; nothing for a string that is no bytes' (a character above 255)."""
    step = min(CHUNK, EMBED_MAX)
    escaped = sum(
        bytes(data[at : min(at + step, end)]).count(b"\\") for at in range(start, end, step)
    )
    n = end - start - (len(ESCAPE) - 1) * escaped
    if sizes is not None and not sizes.may_match(n):
        return
    h, decoder = hashlib.sha256(), codecs.getincrementaldecoder("raw_unicode_escape")()
    for at in range(start, end, step):
        last = at + step >= end
        raw = _latin1(lambda a=at, z=last: decoder.decode(data[a : min(a + step, end)], z))
        if raw is None:
            return
        budget.spend(len(raw))
        h.update(raw)
        _let_go(data, at)
    yield h.hexdigest()


def _string_values(
    data: Buffer, sizes: SizeFilter | None, depth: int, budget: _Budget, floor: int
) -> Iterator[str]:
    """What the STRING values (Python 2's ``str``, :data:`STRING_HEAD`) of ``data``, a pickle of
    protocol 0 or 1, give: each line that begins one (the first such head of a line; its end
    searched for once) and ends with its quote, its repr decoded (:func:`_unescaped`) where it
    may be a key's or not shorter than anything sought (its bytes are no more than its
    characters): :func:`_part` of a key sought, the value whole when of a size sought, each
    PNG and JPEG it holds, the files it holds (:func:`_nested`). One over :data:`EMBED_MAX` is
    hashed a part at a time (:func:`_string_hashed`), not looked inside."""
    from visage_ml.rights import embedded_photos

    test, at = key_test(sizes), 0
    while (pos := embedded_photos._search(data, STRING_HEAD, at)) >= 0:
        end = _find(data, b"\n", pos + 2)
        if end < 0:
            return
        at = end + 1  # the next line: no other head of this one is tried
        start, stop = pos + 2, end - 1
        if stop > start and data[stop] == CR:  # written on Windows: a repr holds no CR
            stop -= 1
        if stop < start or data[stop] != data[pos + 1]:
            continue
        key = test is not None and KEY_SIZE <= stop - start <= REPR_ESCAPE * KEY_SIZE
        if stop - start < floor and not key:
            passed_over(sizes, stop - start)
            continue
        if stop - start > EMBED_MAX:
            yield from _string_hashed(data, start, stop, sizes, budget)
            continue
        raw = _unescaped(bytes(data[start:stop]))
        if raw is None:
            continue
        budget.spend(len(raw))
        if len(raw) == KEY_SIZE:
            if test is not None and test(raw):
                yield from _part(raw, sizes, depth, budget)
            continue
        if len(raw) < floor:
            passed_over(sizes, len(raw))
            continue
        if sizes is None or sizes.may_match(len(raw)):
            yield from _part(raw, sizes, depth, budget)
        else:
            yield from _nested(raw, 0, len(raw), sizes, depth, budget, floor)
        if embedded_photos.PNG_MAGIC in raw or embedded_photos.JPEG_MAGIC in raw:
            yield from _photographs(raw, sizes, depth, budget)


def _unescaped(text: bytes) -> bytes | None:
    """The bytes a STRING's repr ``text`` (its quotes off) gives, as Python 3's pickle reads it
    (``codecs.escape_decode``); None for one Python 2 never wrote: bytes outside printable
    ASCII, an escape cut off or ``\\x`` without two hex digits (an error), one unknown
    (``\\q``: a DeprecationWarning, an error only where warnings are made errors)."""
    if text.translate(None, PRINTABLE):
        return None
    try:
        return codecs.escape_decode(text)[0]
    except (ValueError, DeprecationWarning):
        return None


def _string_hashed(
    data: Buffer, start: int, stop: int, sizes: SizeFilter | None, budget: _Budget
) -> Iterator[str]:
    """The SHA-256 of the bytes a STRING's repr over :data:`EMBED_MAX` gives
    (:func:`_string_values`), ``data[start:stop]``, decoded a :data:`CHUNK` at a time (at
    most; each part cut before an escape it would cut, :func:`_escape_cut`) when ``sizes`` may
    seek their size; nothing for a repr Python 2 never wrote."""
    h, n, at, step = hashlib.sha256(), 0, start, min(CHUNK, EMBED_MAX)
    while at < stop:
        cut = _escape_cut(data, at, min(at + step, stop), stop)
        raw = _unescaped(bytes(data[at:cut]))
        if raw is None:
            return
        budget.spend(len(raw))
        h.update(raw)
        n += len(raw)
        _let_go(data, at)
        at = cut
    if sizes is None or sizes.may_match(n):
        yield h.hexdigest()


def _escape_cut(data: Buffer, lo: int, at: int, stop: int) -> int:
    """Where to end the part of a repr begun at ``lo`` (where no escape goes on) that would end
    at ``at``: there, or before an escape that a backslash in the last 3 bytes begins (one that
    closes ``\\\\``, its run of backslashes from ``lo`` even, begins none)."""
    if at >= stop:
        return stop
    tail = bytes(data[max(lo, at - REPR_ESCAPE + 1) : at])
    if (last := tail.rfind(b"\\")) < 0:
        return at
    q = at - len(tail) + last
    run = bytes(data[lo : q + 1])
    return q if (len(run) - len(run.rstrip(b"\\"))) % 2 else at


def _pickled_values(
    data: Buffer,
    sizes: SizeFilter | None,
    depth: int,
    budget: _Budget,
    floor: int,
    protocols: set[int],
) -> Iterator[str]:
    """:func:`_value` of each ``bytes`` or ``bytearray`` value ``data``, a pickle of protocol
    3 and up (or a file of pickles, one of them such: :func:`_protocols`), holds as it is
    (:data:`SHORT_BINBYTES`, :func:`_binbytes`, :data:`BINBYTES8`, :data:`BYTEARRAY8`; of
    Python 2's protocols 0 to 2, each ``str``: BINSTRING, and SHORT_BINSTRING of a length sought,
    :func:`_short_strs`) of a size sought (a key's, 32 bytes, is :data:`PICKLED_KEY`'s; a
    SHORT_BINSTRING's is tested here, one of another length under 256 bytes hashed as it is,
    looked inside only where it may expand: what else it holds is shorter still); each read
    from its opcode's length and memoized after it (:data:`MEMOIZED`, :data:`MEMO_PUT`), only
    those of a size sought hashed (what is spent from ``budget``); those smaller than anything
    sought (``floor``) passed over, SHORT_BINBYTES' not looked for unless something that short
    is sought."""
    size, top = len(data), min(len(data) >> 24, 255)
    older = min(protocols) < 3  # Python 2's ``str`` (BINSTRING, SHORT_BINSTRING)
    memo = (
        MEMO_PUT if max(protocols) < 4 else MEMOIZED if not protocols & {0, 1, 2, 3} else MEMO_ANY
    )
    heads: list[tuple[re.Pattern[bytes], int]] = []
    if max(protocols) >= 3:  # protocol 2 has no opcode for bytes (:func:`_latin1_strings`)
        heads.append((_binbytes(top), 4))
        if floor <= SHORT_MAX:
            heads.append((SHORT_BINBYTES, 1))
        if size >> 32:
            heads.append((BINBYTES8, 8))
        if 5 in protocols:
            heads.append((BYTEARRAY8, 8))
    test = key_test(sizes) if older else None  # a key's 32 bytes a SHORT_BINSTRING too
    if older:
        heads.append((_binbytes(top, b"T"), 4))
    if floor > SHORT_MAX:
        passed_over(sizes, SHORT_MAX)
    for head, width in heads:
        for at in _heads(data, head, width):
            start = at + 1 + width
            n = int.from_bytes(data[at + 1 : start], "little")
            end = start + n
            if not n or end > size or memo.match(data, end) is None:
                continue
            if n == KEY_SIZE:  # protocol 3 and up: PICKLED_KEY's
                continue
            if sizes is None or (n >= floor and sizes.may_match(n)):
                budget.spend(n)
                yield from _value(data, start, end, sizes, depth, budget)
            else:
                if n < floor:
                    passed_over(sizes, n)
                yield from _nested(data, start, end, sizes, depth, budget, floor, {2, *protocols})
    lengths = _short_sought(sizes, floor, test is not None) if older else b""
    for start, end in _short_strs(data, lengths) if lengths else ():
        raw = bytes(data[start:end])
        if end - start == KEY_SIZE:
            if test is not None and test(raw):
                yield from _part(raw, sizes, depth, budget)
        elif raw.startswith(EXPANDS):
            yield from _part(raw, sizes, depth, budget)
        else:  # hashed here: millions of them, each a call through _part
            yield hashlib.sha256(raw).hexdigest()


def _short_sought(sizes: SizeFilter | None, floor: int, key: bool) -> bytes:
    """The lengths under 256 bytes of a size sought (from ``floor``; a key's where ``key``),
    as bytes: those of the SHORT_BINSTRING values to read (:func:`_pickled_values`)."""
    if floor > SHORT_MAX:
        return bytes([KEY_SIZE]) if key else b""
    # each asked, those under ``floor`` too: a filter that keeps count notes them passed over
    return bytes(
        n
        for n in range(1, SHORT_MAX + 1)
        if (key if n == KEY_SIZE else sizes is None or sizes.may_match(n))
    )


def _short_strs(data: Buffer, lengths: bytes) -> Iterator[tuple[int, int]]:
    """Where each SHORT_BINSTRING of one of ``lengths`` lies in ``data`` (its bytes' start and
    end, in order), memoized after it (BINPUT, LONG_BINPUT: :data:`MEMO_PUT`): each ``U``, its
    length and the opcode after it told with NumPy, :data:`SHORT_CHUNK` at a time (its arrays
    are a few times a chunk: a window of the file, or one of nothing but ``U``), over a mapped file
    letting go of what it passed."""
    import numpy as np

    wanted = np.zeros(256, dtype=bool)
    wanted[list(lengths)] = True
    size = len(data)
    step = SHORT_CHUNK
    for at in range(0, size, step):
        stop = min(at + step, size)
        window = np.frombuffer(data, np.uint8, min(stop + SHORT_REACH, size) - at, at)
        ops = np.flatnonzero(window[: stop - at] == SHORT_BINSTRING)
        ops = ops[ops + 1 < window.size]
        n = window[ops + 1]
        ends = ops + 2 + n
        kept = wanted[n] & (ends + 1 < window.size)  # BINPUT's index after it, at least
        ops, ends = ops[kept], ends[kept]
        put = window[ends]
        kept = (put == ord("q")) | ((put == ord("r")) & (ends + 4 < window.size))
        del window, put
        starts, ends = (ops[kept] + (at + 2)).tolist(), (ends[kept] + at).tolist()
        yield from zip(starts, ends, strict=True)
        _let_go(data, stop)


def _protocols(data: Buffer, begins: int = 0) -> set[int]:
    """The protocols of the pickles ``data`` holds, one after another (a log dumped record by
    record over years of Python versions): the first's (at ``begins``: after a ``.npy``
    file's header, :func:`_npy_pickle`), and each of 3 to 5 that a pickle's STOP then PROTO
    (:data:`NEXT_PICKLE`) names."""
    found = {data[begins + 1]}
    for at in _heads(data, NEXT_PICKLE, NEXT_PICKLE_REACH):
        found.add(data[at + 2])
        if found >= {3, 4, 5}:
            break
    return found


@functools.lru_cache(maxsize=16)
def _binbytes(top: int, opcode: bytes = b"B") -> re.Pattern[bytes]:
    """BINBYTES' ``B`` (BINSTRING's ``T``: ``opcode``) where a length follows whose last byte
    (the highest) is ``top`` at most: that of a file's own length."""
    return re.compile(opcode + rb"(?=[\s\S]{3}[\x00-" + re.escape(bytes([top])) + rb"])")


def _heads(data: Buffer, head: re.Pattern[bytes], width: int) -> Iterator[int]:
    """Where ``head`` (an opcode's byte, a lookahead of ``width`` bytes after it) matches in
    ``data``, in order; over a mapped file :data:`LET_GO` at a time, letting go of what it
    passed."""
    size = len(data)
    step = LET_GO if isinstance(data, _Map) else max(size, 1)
    for at in range(0, size, step):
        stop = min(at + step, size)
        # in C: a pickle of millions of short values is as many matches
        starts = map(re.Match.start, head.finditer(data, at, min(stop + width, size)))
        yield from itertools.takewhile(stop.__gt__, starts)
        _let_go(data, stop)


def _nested(
    data: Buffer,
    start: int,
    end: int,
    sizes: SizeFilter | None,
    depth: int,
    budget: _Budget,
    floor: int,
    read_as_is: Container[int] = (),
) -> Iterator[str]:
    """What ``data[start:end]``, a pickled value of no size sought, holds when it is a file that
    holds others (:func:`_holds_files`: a zip, a gzip stream, a table, a pickle), up to
    :data:`EMBED_MAX` (a cache of archives, a queue of serialised records); one smaller than
    anything sought (``floor``) only when compressed (what it holds may be larger). A pickle of
    a protocol in ``read_as_is`` (its PROTO's; one of protocol 0 or 1 has none, and is read) is
    not read again: the reading of the file it lies in found
    its opcodes where they lie (a pickle of protocol 3 to 5: those of its own protocols, and
    protocol 2's strings; none in a protocol-2 string, whose bytes lie there as UTF-8)."""
    n = end - start
    if depth >= DEPTH or n > EMBED_MAX:
        return
    if n < floor and bytes(data[start : start + 2]) not in EXPANDS:
        return
    first = bytes(data[start : start + KIND_SNIFF])
    what = _holds_files(first)
    if what is None or (what == BINARY and PICKLE_MAGIC.match(first) and first[1] in read_as_is):
        return
    value = bytes(data[start:end])
    budget.spend(n)
    if what == BINARY:  # a pickle: what it holds as a pickle (no text, no photograph as it is)
        yield from _pickled(value, what, sizes, depth + 1, budget)
        if _also_tar(value[:SNIFF]):
            yield from inside_file(
                io.BytesIO(value), TAR, sizes=sizes, depth=depth + 1, budget=budget
            )
    elif what == COMPRESSED and (out := _inflated(value, EMBED_MAX)) is not None:
        budget.spend(len(out))  # a value of many: in memory, not as a stream read from a file
        yield from _part(out, sizes, depth + 1, budget)
    else:
        yield from inside(value, what, sizes=sizes, depth=depth + 1, budget=budget)


def _inflated(data: bytes, limit: int) -> bytes | None:
    """What ``data``, a compressed stream (:func:`stream_kind`; a gzip, xz or bzip2 one of one
    or more members), decompresses to when that is ``limit`` bytes at most; None when more, cut
    short or damaged (then read as a stream is, :func:`inside`). A pickle's many small
    compressed values were each opened as a file and tried as a tar: 100 us a value, ten times
    as long as the rest of the reading."""
    how = stream_kind(data[:SNIFF])
    if how in ARROW_CODECS:
        return _arrow_inflated(data, limit, how)
    make: Callable[[], Any] = {
        GZIP: functools.partial(zlib.decompressobj, 31),
        ZLIB: zlib.decompressobj,
        XZ: lzma.LZMADecompressor,
        LZMA_ALONE: functools.partial(lzma.LZMADecompressor, lzma.FORMAT_ALONE),
    }.get(how or "", bz2.BZ2Decompressor)
    parts, total, rest = [], 0, data
    while rest:
        member = make()
        try:
            part = member.decompress(rest, limit + 1 - total)
        except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError):
            return None
        parts.append(part)
        total += len(part)
        if total > limit or not member.eof:
            return None
        rest = member.unused_data
        if rest and kind(rest[:SNIFF]) != COMPRESSED:  # what follows the last member: no more
            break
    return b"".join(parts)


def _arrow_inflated(data: bytes, limit: int, codec: str) -> bytes | None:
    """:func:`_inflated` of zstd or LZ4 frames (pyarrow's ``codec``)."""
    import pyarrow as pa

    try:
        with pa.CompressedInputStream(pa.BufferReader(data), codec) as stream:
            out = stream.read(limit + 1)
    except (pa.ArrowException, OSError, ValueError):
        return None
    return out if len(out) <= limit else None


def _holds_files(first: bytes) -> str | None:
    """:func:`kind` of a part beginning with ``first`` when it holds other files as they are or
    compressed (:func:`_magic_kind`; a tar not begun by a header too, :func:`_tar_blocks`), or
    is a pickle (:data:`BINARY`; one of protocol 0 or 1 too, :func:`_old_pickle`, a text among
    them: its strings' bytes lie in it escaped); None for another text (the file it lies in is
    read as text already), an array's bytes and what holds none."""
    if PICKLE_MAGIC.match(first):
        return BINARY
    if (what := _magic_kind(first)) is not None:
        return what
    # Protocol 0 or 1 (a text too: Python 2's, its strings' bytes escaped), told as kind()
    # tells it.
    return _tar_or_old_pickle(first, _text(first))


def _value(
    data: Buffer, start: int, end: int, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """:func:`_part` of ``data[start:end]``, a pickled value of a size sought, held; one larger
    than :data:`EMBED_MAX` hashed a :data:`CHUNK` at a time (at most) where it lies (what it
    holds is not looked inside)."""
    if end - start <= EMBED_MAX:
        yield from _part(bytes(data[start:end]), sizes, depth, budget)
        return
    h, step = hashlib.sha256(), min(CHUNK, EMBED_MAX)
    for at in range(start, end, step):
        h.update(data[at : min(at + step, end)])
        _let_go(data, at)
    yield h.hexdigest()


def _latin1_sought(
    data: Buffer, start: int, end: int, sizes: SizeFilter | None, floor: int
) -> bool:
    """Whether the bytes a protocol-2 string gives, its UTF-8 ``data[start:end]``
    (:func:`_latin1_strings`), are of a size sought (a key's aside): as many as its characters
    (:func:`_characters`), counted only when its UTF-8 is not shorter than anything sought
    (``floor``); one that short, or holding fewer characters, is passed over."""
    if end - start < floor:
        passed_over(sizes, end - start)
        return False
    n = _characters(data, start, end)
    if n < floor:
        passed_over(sizes, n)
        return False
    return n > 0 and n != KEY_SIZE and (sizes is None or sizes.may_match(n))


def _characters(data: Buffer, start: int, end: int) -> int:
    """How many latin-1 characters the UTF-8 ``data[start:end]`` holds: a byte each, but for the
    lead byte (C2 or C3) of each from 0x80 up, counted a :data:`CHUNK` at a time (at most) with
    NumPy (0.2 ns a byte; ``bytes.count`` of each lead byte took 3.3 ns, as long as decoding,
    one byte in three being one)."""
    import numpy as np

    n, step = end - start, min(CHUNK, EMBED_MAX)
    for at in range(start, end, step):
        window = np.frombuffer(data[at : min(at + step, end)], np.uint8)
        n -= int(np.count_nonzero(window >= 0xC2))
    return n


def _photographs(
    data: Buffer, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """:func:`_part` of each PNG and JPEG lying in ``data`` as it is (a multi-picture file's
    JPEGs together, a motion photo with its video, a Galaxy's with its trailer, where its size
    is sought); a stretch too large to hold comes as its SHA-256, its size sought already
    (:func:`~visage_ml.rights.embedded_photos._given`)."""
    from visage_ml.rights import embedded_photos

    told: dict[bytes, str | None] = {}  # kind() of the stretches' first bytes
    for found in itertools.chain(embedded_photos._pngs(data), embedded_photos._jpegs(data, sizes)):
        if isinstance(found, str):
            yield found
        else:
            yield from _part(found, sizes, depth, budget, told)


def _signed(data: Buffer) -> Callable[[int, int], bool]:
    """Whether a PNG's or a JPEG's signature, as a protocol-2 string holds it (its latin-1
    characters' UTF-8), lies in ``data[start:end]``, asked of spans in order: each signature
    found by a ``bytes.find`` forward from where it last lay, so that the file is searched once
    whatever the number of spans (0.2 s for 200 MiB, both), and a mapped one let go of."""
    from visage_ml.rights import embedded_photos

    next_at = {
        magic.decode("latin-1").encode(): -1
        for magic in (embedded_photos.PNG_MAGIC, embedded_photos.JPEG_MAGIC)
    }

    def signed(start: int, end: int) -> bool:
        for sign, at in next_at.items():
            if at < start:
                at = _find(data, sign, start)
                at = next_at[sign] = at if at >= 0 else len(data)
            if at + len(sign) <= end:
                return True
        return False

    return signed


def _latin1_strings(data: Buffer) -> Iterator[tuple[int, int]]:
    """Where the UTF-8 of each string ``s`` of a ``_codecs.encode(s, 'latin1')`` lies in
    ``data``, a pickle of protocol 2 (:data:`CODECS_ENCODE`), in order, none within another:
    a BINUNICODE after the GLOBAL or after a get of its memo, whichever lies first, that
    :data:`LATIN1_ARGS` follows."""
    from visage_ml.rights.embedded_photos import _search

    heads: dict[bytes | re.Pattern[bytes], int] = {}

    def look(head: bytes | re.Pattern[bytes], start: int) -> None:
        at = _find(data, head, start) if isinstance(head, bytes) else _search(data, head, start)
        if at < 0:
            heads.pop(head, None)
        else:
            heads[head] = at

    look(CODECS_ENCODE, 0)
    look(PY2_BYTEARRAY, 0)  # Python 2's bytearray, its string and 'latin-1' so too
    done = 0  # where the last string ended: a head before it lies within one
    while heads:
        head = min(heads, key=heads.__getitem__)
        at = heads[head]
        if at < done:
            look(head, done)
            continue
        if head is ANY_GET:
            after = at + (3 if data[at : at + 1] == b"h" else 6)
        elif head not in (CODECS_ENCODE, PY2_BYTEARRAY):
            after = at + len(head)
        else:
            after = _encode_got(data, at + len(head), heads, look)
        start, end = after + 4, -1
        if after >= 0:
            end = start + int.from_bytes(data[after:start], "little")
        if not start <= end <= len(data) or LATIN1_ARGS.match(data, end) is None:
            look(head, at + 1)
            continue
        done = end
        look(head, end)  # past the string: its UTF-8 is most of such a pickle
        yield start, end


def _encode_got(
    data: Buffer,
    after: int,
    heads: dict[bytes | re.Pattern[bytes], int],
    look: Callable[[bytes | re.Pattern[bytes], int], None],
) -> int:
    """Where the length of the BINUNICODE after ``_codecs.encode``'s GLOBAL (ending at
    ``after``) lies, -1 when none does; a get of the index it is memoized at (:data:`MEMO_PUT`)
    sought from there (``look``) among ``heads``, or any get beyond
    :data:`ENCODE_GETS_MAX` of them."""
    if (put := MEMO_PUT.match(data, after)) is not None:
        got = (b"h" + put[1] if put[1] is not None else b"j" + put[2]) + BINUNICODE
        if got not in heads and ANY_GET not in heads:
            if len(heads) > ENCODE_GETS_MAX:
                for head in [h for h in heads if h not in (CODECS_ENCODE, PY2_BYTEARRAY)]:
                    del heads[head]
                got = ANY_GET
            look(got, put.end())
        after = put.end()
    return after + 1 if data[after : after + 1] == BINUNICODE else -1


def _latin1_holds_files(data: Buffer, start: int, end: int, depth: int, floor: int) -> bool:
    """Whether the bytes a protocol-2 string gives (its UTF-8 ``data[start:end]``) begin as a
    file that holds others (:func:`_holds_files`), up to :data:`EMBED_MAX`, one smaller than
    anything sought (``floor``: its UTF-8 is, then) only when compressed (:func:`_nested`): its
    first :data:`KIND_SNIFF` characters decoded (two bytes each at most)."""
    if depth >= DEPTH or end - start > EMBED_MAX:
        return False
    head = _latin1_head(data, start, end, LATIN1_HEAD)
    if head is None or (end - start < floor and head[:2] not in EXPANDS):
        return False
    # A tar's magic and a PDF's header are ASCII: as they are in the UTF-8, a few bytes on.
    near = start, min(end, start + 2 * KIND_SNIFF)
    # Zeros first: a tar may follow them (:func:`_tar_blocks`). A header's checksum in its
    # place: a V7 tar's first header, its name and numbers ASCII, lies as it is in the UTF-8.
    if (
        _holds_files(head) is None
        and head.strip(b"\x00")
        and all(data.find(m, *near) < 0 for m in (TAR_MAGIC, PDF_MAGIC))
        and not _tar_octal(bytes(data[start + TAR_CHECKSUM.start : start + TAR_CHECKSUM.stop]))
    ):
        return False
    first = _latin1_head(data, start, end, KIND_SNIFF)
    return first is not None and _holds_files(first) is not None


def _latin1_head(data: Buffer, start: int, end: int, n: int) -> bytes | None:
    """The first ``n`` bytes a protocol-2 string gives (its UTF-8 ``data[start:end]``); None
    when they are no latin-1 characters."""
    head = bytes(data[start : min(end, start + 2 * n)]).decode("utf-8", "ignore")
    try:
        return head[:n].encode("latin-1")
    except UnicodeEncodeError:
        return None


@contextlib.contextmanager
def _latin1_bytes(data: Buffer, start: int, end: int) -> Iterator[Buffer | None]:
    """The bytes ``_codecs.encode(s, 'latin1')`` gives, ``s`` the UTF-8 of ``data[start:end]``
    (:func:`_latin1_strings`); None when it is no latin-1 string (a character above 255, or
    no UTF-8). Up to :data:`EMBED_MAX` held, a larger one decoded a :data:`CHUNK` at a time
    (at most) to an unnamed file of :data:`SPILL_DIR` and mapped (:func:`mapped`).

    Raises
    ------
    NotSpilled
        When that file cannot be written.
    """
    if end - start <= EMBED_MAX:
        yield _pickled_bytes(data, start, end)
        return
    from visage_ml.rights.embedded_spill import _close, _spilling

    decoder = codecs.getincrementaldecoder("utf-8")()
    step = min(CHUNK, EMBED_MAX)
    with contextlib.ExitStack() as stack:
        spill = _spilling(lambda: tempfile.TemporaryFile(dir=SPILL_DIR))  # noqa: SIM115
        stack.callback(_close, spill)
        for at in range(start, end, step):
            last = at + step >= end
            raw = _latin1(lambda a=at, z=last: decoder.decode(data[a : min(a + step, end)], z))
            if raw is None:
                yield None
                return
            _spilling(lambda r=raw: spill.write(r))
        _spilling(spill.flush)
        yield stack.enter_context(mapped(spill))


def _pickled_bytes(data: Buffer, start: int, end: int) -> bytes | None:
    """:func:`_latin1_bytes` of a string held in memory: the bytes ``_codecs.encode(s,
    'latin1')`` gives, ``s`` the UTF-8 of ``data[start:end]``; None when it is another string."""
    return _latin1(lambda: bytes(data[start:end]).decode("utf-8"))


def _latin1(decode: Callable[[], str]) -> bytes | None:
    """What ``decode()`` gives, encoded as latin-1; None when it fails (no UTF-8, a character
    above 255)."""
    try:
        return decode().encode("latin-1")
    except UnicodeError:
        return None


def _compressed(
    data: Buffer, what: str, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """What a PDF's ASCII85 and deflated streams and an Arrow file's batches hold, decoded
    (:func:`inside`, :func:`_mapped`); what is decoded is spent from ``budget``."""
    if what == PDF:
        from visage_ml.rights import embedded_pdf, embedded_spill

        for decoded in embedded_pdf._a85(data):
            budget.spend(len(decoded))
            yield from _part(decoded, sizes, depth, budget)
        for stream in embedded_pdf._flates(data):
            yield from embedded_spill._stream(stream, None, sizes, depth, budget)
    elif what == BINARY and (form := embedded_formats.arrow(bytes(data[:SNIFF]))) is not None:
        from visage_ml.rights import embedded_tables

        yield from embedded_tables._arrow(data, form, sizes, depth, budget)


# The bytes a base64 run holds (:data:`~visage_ml.rights.embedded_text.B64_RUN`: either
# alphabet, padding, line breaks, JSON's escapes): a large file is read in windows split at the
# last byte of a window not among them (found from its end: a regular expression tried at each
# byte of the window took a second for 20 MB of a pickle).
_RUN_BYTES = (string.ascii_letters + string.digits + "+/_-=\r\n\\").encode()
# The separators of a key printed as hex pairs joined (``key.hex(":")``:
# :func:`~visage_ml.rights.embedded_text._paired`); no window ends between two pairs either, nor
# within a key printed as its numbers (``[143, 26, ...]``: its brackets, commas and spaces,
# :func:`~visage_ml.rights.embedded_text._numbered`).
PAIR_SEPARATORS = b": -"
_WINDOW_KEEPS = _RUN_BYTES + PAIR_SEPARATORS + b",[]()"
# A key printed as a bytes literal (``b'!#\x8f...'``:
# :func:`~visage_ml.rights.embedded_text._literals`) may hold any printable character: a window
# ends before the last ``b'``, ``b"`` or JSON's ``b\"`` among its last bytes (as long as the
# longest such literal, each byte JSON-escaped as ``\\x8f``), whether or not it closes there.
_LITERAL_START = re.compile(rb"(?<![A-Za-z0-9_])b(?:'|\"|\\\")")
_LITERAL_REACH = 8 + 5 * KEY_SIZE
# A key file as a hex viewer shows it (:func:`~visage_ml.rights.embedded_text._dumped`) holds a
# column of any printable characters too: a window ends before the first line among its last
# bytes (as long as two such lines, each character JSON-escaped, and what joins them in a
# notebook's list of lines) that begins with six zeros (the first line's offset) after a byte no
# base64 run holds or JSON's escaped line break: never within a base64 run.
_DUMP_LINE_START = re.compile(rb"(?:[^A-Za-z0-9+/_=\\-]|\\n)(?=000000)")
_DUMP_WINDOW_REACH = 2 * (10 + 3 * 16 + 4 + 6 * 16 + 16)


def _file_budget(fh: IO[bytes]) -> _Budget:
    """The budget of what the file ``fh`` holds from where it stands (its size from there)."""
    at = fh.tell()
    size = fh.seek(0, io.SEEK_END) - at
    fh.seek(at)
    return _Budget(size)


def inside_text(
    fh: IO[bytes],
    *,
    sizes: SizeFilter | None = None,
    depth: int = 0,
    budget: _Budget | None = None,
) -> Iterator[str]:
    """:func:`inside` for a text file too large to hold whole (over :data:`EMBED_MAX`), read
    from ``fh`` a window at a time: each window ends at its last byte no base64 run and no key
    printed as hex pairs or numbers holds, or before a bytes literal or a hex viewer's dump
    that may run past it, what follows read with the next (a run is never split, unless one
    run is longer than a window)."""
    budget = _file_budget(fh) if budget is None else budget
    carry = b""
    while block := fh.read(EMBED_MAX):
        buf = carry + block
        last = len(buf.rstrip(_WINDOW_KEEPS)) - 1  # -1: none
        cut = last + 1 if last >= 0 and len(buf) - last <= EMBED_MAX else 0
        cut = cut or len(buf)
        # Nor a bytes literal (what follows it is read with the next window, or after the last).
        reach = _LITERAL_START.finditer(buf, max(0, cut - _LITERAL_REACH), cut + 2)
        starts = [m.start() for m in reach if 0 < m.start() < cut]
        cut = starts[-1] if starts else cut
        # Nor a hex viewer's dump: the first such line among those bytes (a later one may be
        # its second line).
        if (
            dump := _DUMP_LINE_START.search(buf, max(0, cut - _DUMP_WINDOW_REACH), cut)
        ) is not None:
            cut = dump.end()
        yield from inside(buf[:cut], TEXT, sizes=sizes, depth=depth, budget=budget)
        carry = buf[cut:]
    if carry:
        yield from inside(carry, TEXT, sizes=sizes, depth=depth, budget=budget)


def inside_file(
    fh: IO[bytes],
    what: str,
    *,
    sizes: SizeFilter | None = None,
    depth: int = 0,
    budget: _Budget | None = None,
) -> Iterator[str]:
    """:func:`inside` for an archive or a compressed file read from ``fh`` (seekable), whatever
    its size: member by member.

    Raises
    ------
    TooLarge
        As :func:`inside`.
    """
    from visage_ml.rights import embedded_archives as archives

    budget = _file_budget(fh) if budget is None else budget
    if what == ZIP:
        yield from archives._zip(fh, sizes, depth, budget)
    elif what == TAR:
        if (t := archives._open_tar(fh)) is not None:
            yield from archives._tar(t, sizes, depth, budget)
    elif what == COMPRESSED:
        yield from archives._decompressed(fh, sizes, depth, budget)


def inside_large(
    fh: IO[bytes],
    what: str,
    *,
    sizes: SizeFilter | None = None,
    depth: int = 0,
    budget: _Budget | None = None,
) -> Iterator[str]:
    """:func:`inside` for a file too large to hold (over :data:`EMBED_MAX`; one of
    :data:`LARGE`), read from ``fh``, whatever its size: an archive member by member
    (:func:`inside_file`), a text file a window at a time (:func:`inside_text`), a table a few
    rows at a time (:func:`~visage_ml.rights.embedded_tables._table`); a pickle, an array, an
    Arrow file or a PDF (``fh`` a file of the system, read from its start) is mapped, read-only
    (a copy of it: :func:`mapped`), and walked as bytes held are, the system paging it in and
    the walks letting go of what lies behind them; its base64 runs a window at a time, an Arrow
    file's batches one at a time, a PDF's deflated streams inflated a part at a time.

    Raises
    ------
    TooLarge
        As :func:`inside`; :class:`NotSpilled` when a pickle's, an array's or a PDF's copy cannot
        be written.
    """
    budget = _file_budget(fh) if budget is None else budget
    if what in STREAMED:
        yield from inside_file(fh, what, sizes=sizes, depth=depth, budget=budget)
    elif what == TEXT:
        yield from inside_text(fh, sizes=sizes, depth=depth, budget=budget)
    elif what == UTF16:  # decoded a window at a time, read as a text file's bytes are
        text = cast(IO[bytes], embedded_utf16.Utf8Reader(fh))
        yield from inside_text(text, sizes=sizes, depth=depth, budget=budget)
    elif what == PARQUET:
        from visage_ml.rights import embedded_tables as tables

        yield from tables._table(fh, sizes, depth, budget, rows=tables.TABLE_ROWS)
    elif what in (BINARY, PDF):
        yield from _mapped(fh, what, sizes, depth, budget)
    elif what == SQLITE:
        from visage_ml.rights import embedded_spill

        yield from embedded_spill._database(fh, sizes)


def _mapped(
    fh: IO[bytes], what: str, sizes: SizeFilter | None, depth: int, budget: _Budget
) -> Iterator[str]:
    """:func:`inside` of a pickle, an array, an Arrow file or a PDF read from its file
    (:func:`inside_large`): the same base64 runs, pickled bytes, PNGs, JPEGs, PDF streams decoded
    and Arrow batches, in the same order."""
    fh.seek(0)
    yield from inside_text(fh, sizes=sizes, depth=depth, budget=budget)  # its base64 runs
    with mapped(fh) as data:
        yield from _pickled(data, what, sizes, depth, budget)
        yield from _photographs(data, sizes, depth, budget)
        yield from _compressed(data, what, sizes, depth, budget)
        first = bytes(data[:SNIFF])
    if what == BINARY and _also_tar(first):
        fh.seek(0)
        yield from inside_file(fh, TAR, sizes=sizes, depth=depth, budget=budget)


@contextlib.contextmanager
def mapped(fh: IO[bytes]) -> Iterator[Buffer]:
    """The bytes of ``fh`` (a file of the system, read from its start) mapped read-only; b""
    when it is empty. A file with a name is copied first, to an unnamed file of
    :data:`SPILL_DIR`, and the copy mapped: another program that truncates a file mapped while
    it is read (``np.save`` or ``pickle.dump`` over it, whose ``open("wb")`` empties it first;
    SQLite's checkpoint truncating its ``-wal``) has the system send SIGBUS at the first page
    past its new end, which kills the whole process (an erasure half done, a verifier with no
    report). An unnamed file (one spilled already) no other program can open is mapped itself.

    Raises
    ------
    NotSpilled
        When the copy cannot be written (no room left).
    """
    from visage_ml.rights.embedded_spill import _close, _spilling

    with contextlib.ExitStack() as stack:
        if os.fstat(fh.fileno()).st_nlink:
            copy = _spilling(lambda: tempfile.TemporaryFile(dir=SPILL_DIR))  # noqa: SIM115
            stack.callback(_close, copy)
            fh.seek(0)
            _spilling(lambda: shutil.copyfileobj(fh, copy, CHUNK))
            _spilling(copy.flush)
            fh = copy
        try:
            data = _Map(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty: nothing in it
            yield b""
            return
        try:
            yield data
        finally:
            # A walk stopped early may still hold a view of it: then it goes with the walk.
            with contextlib.suppress(BufferError):
                data.close()


def _text_of(data: bytes) -> bytes:
    """The text file ``data`` as UTF-8: a UTF-16 text's decoded exactly
    (:func:`~visage_ml.rights.embedded_utf16.utf8_of`; :class:`UnicodeDecodeError` where it is
    no UTF-16 throughout), any other as it is."""
    if embedded_utf16.codec(data[:SNIFF]) is None:
        return data
    return embedded_utf16.utf8_of(data, exact=True)


def encoded(path: Path) -> set[str]:
    """The SHA-256s of what each base64 run of the text file at ``path`` decodes to, itself
    (not what that holds: an archive's members); a UTF-16 text's, of the text it decodes to,
    none where it does not decode exactly (it cannot be written back as it was:
    :func:`cut_encoded`)."""
    from visage_ml.rights import embedded_text

    try:
        text = _text_of(path.read_bytes())
    except UnicodeDecodeError:
        return set()
    return {hashlib.sha256(raw).hexdigest() for _, raw in embedded_text._runs(text)}


def cut_encoded(path: Path, digests: Container[str]) -> int:
    """Rewrite the text file at ``path`` (atomically, mode kept) without each base64 run that
    decodes to content in ``digests``; returns how many went. A ``data:`` URL keeps its header,
    a JSON or CSV field is left empty, a line of its own is left empty (the lines about it
    kept). A run that decodes to a file holding such content (an archive) is not cut: the rest
    of what it holds would go with it (:func:`encoded` tells the one from the other). A UTF-16
    text is cut in the text it decodes to, written back in its byte order, its mark first.

    Raises
    ------
    UnicodeDecodeError
        For a UTF-16 text that does not decode exactly (an odd byte at its end): not rewritten.
    """
    from visage_ml.rights import embedded_text

    raw_file = path.read_bytes()
    data = _text_of(raw_file)
    runs = embedded_text._runs(data)
    cut = [span for span, raw in runs if hashlib.sha256(raw).hexdigest() in digests]
    if not cut:
        return 0
    merged: list[tuple[int, int]] = []
    for start, end in sorted(cut):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    out, at = [], 0
    for start, end in merged:
        out.append(data[at:start])
        at = end
    out.append(data[at:])
    kept = b"".join(out)
    if data is not raw_file:  # a UTF-16 text's: written back so
        kept = embedded_utf16.utf16_of(kept, raw_file)
    atomic_write_bytes(path, kept, mode=path.stat().st_mode & 0o777)
    return len(merged)
