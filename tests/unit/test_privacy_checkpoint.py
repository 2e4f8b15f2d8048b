"""The C2SP formats of privacy/checkpoint.py, against published vectors.

Vectors: golang.org/x/mod/sumdb/note (note_test.go: TestSign, TestOpen, TestNewVerifier),
transparency-dev/formats (note_cosigv1_test.go: vkeys and cosignature timestamps;
proof/tlog_proof_test.go: TestMarshal) and the examples of c2sp.org/tlog-cosignature.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visage_ml.privacy import merkle
from visage_ml.privacy.checkpoint import (
    COSIGNATURE_V1,
    ED25519,
    Checkpoint,
    NoteError,
    Signature,
    Signer,
    TlogProof,
    cosignature_timestamp,
    cosigned_message,
    cosigner,
    format_add_checkpoint,
    format_note,
    parse_add_checkpoint,
    parse_checkpoint,
    parse_note,
    parse_skey,
    parse_tlog_proof,
    parse_vkey,
    verified_cosigners,
    verify_note,
)

# golang.org/x/mod/sumdb/note, note_test.go
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
    "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01o"
    "OTGwnWLox33WWd1RvMc+QQ=\n"
).encode()


def test_signing_reproduces_go_note_sign_byte_for_byte():
    signer = parse_skey(PETER_SKEY)
    assert signer.verifier().vkey == PETER_VKEY
    assert signer.skey == PETER_SKEY
    assert format_note(TEXT, [signer.sign(TEXT)]) == TEXT + b"\n" + PETER_SIG


def test_key_id_is_the_first_four_bytes_of_sha256_of_name_newline_type_key():
    v = parse_vkey(PETER_VKEY)
    digest = hashlib.sha256(b"PeterNeumann\n\x01" + v.raw).digest()
    assert v.key_id == int.from_bytes(digest[:4], "big") == 0xC74F20A3


def test_open_verifies_known_keys_and_ignores_unknown_ones():
    peter, enoch = parse_vkey(PETER_VKEY), parse_vkey(ENOCH_VKEY)
    msg = TEXT + b"\n" + PETER_SIG + ENOCH_SIG
    assert verify_note(msg, [peter]) == [peter]
    assert verify_note(msg, [peter, enoch]) == [peter, enoch]
    with pytest.raises(NoteError, match="no verifiable signatures"):
        verify_note(msg, [])
    # A known key's bad signature rejects the whole note (Go: "invalid signature for key").
    bad = PETER_SIG[:60] + b"ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann"):
        verify_note(TEXT + b"\n" + bad + ENOCH_SIG, [peter, enoch])
    # The same name with another key ID is an unknown key, not a failure.
    other = parse_vkey(Signer("PeterNeumann", Ed25519PrivateKey.generate()).verifier().vkey)
    with pytest.raises(NoteError, match="no verifiable"):
        verify_note(TEXT + b"\n" + PETER_SIG, [other])


@pytest.mark.parametrize(
    "msg",
    [
        TEXT,
        TEXT + b"\n",
        TEXT + b"\n" + PETER_SIG[:-1],
        b"\x01" + TEXT + b"\n" + PETER_SIG,
        b"\xff" + TEXT + b"\n" + PETER_SIG,
        TEXT
        + b"\n"
        + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUg"
        "YN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=".encode(),
        TEXT + b"\n" + PETER_SIG + b"Unexpected line.\n",
        TEXT + b"\n" + PETER_SIG * 101,
    ],
)
def test_malformed_notes_are_refused_as_go_refuses_them(msg):
    with pytest.raises(NoteError):
        verify_note(msg, [parse_vkey(PETER_VKEY)])


def test_mangled_verifier_keys_are_refused():
    parse_vkey(PETER_VKEY)
    b = bytearray(PETER_VKEY.encode())
    for i in range(len(b)):
        b[i] += 1
        with pytest.raises(NoteError):
            parse_vkey(b.decode("latin-1"))
        b[i] -= 1
    for cut in (PETER_VKEY[:-4], PETER_VKEY[1:], PETER_VKEY.replace("+", "", 1)):
        with pytest.raises(NoteError):
            parse_vkey(cut)
    with pytest.raises(NoteError):  # unknown algorithm, key hash adjusted (Go's vector)
        parse_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_cosignature_key_ids_and_timestamps_match_the_published_ones():
    # transparency-dev/formats: a native cosignature/v1 vkey, and an Ed25519 vkey whose key is
    # used for cosignatures (type 0x04, hence another key ID).
    assert parse_vkey("remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2")
    v = cosigner("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")
    assert v.sig_type == COSIGNATURE_V1
    digest = hashlib.sha256(b"TEST\n\x04" + v.raw).digest()
    assert v.key_id == int.from_bytes(digest[:4], "big")
    go = base64.b64decode(
        "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOwor"
        "DcFiEBYJXORmnFBOBA=="
    )
    assert cosignature_timestamp(Signature("x", 0, go[4:])) == 1727964367
    # The c2sp.org/tlog-cosignature example cosignature is dated "time 1679315147".
    spec = base64.b64decode(
        "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0"
        "xUe+mbIUBkBIfZ+qnA=="
    )
    assert cosignature_timestamp(Signature("x", 0, spec[4:])) == 1679315147


def test_cosignature_signs_header_time_and_checkpoint_and_nothing_else():
    w = Signer("witness.example/w1", Ed25519PrivateKey.generate())
    text = Checkpoint("example.com/log", 5, bytes(32)).text()
    sig = w.cosign(text, timestamp=1679315147)
    assert sig.sig[:8] == (1679315147).to_bytes(8, "big")
    w.private_key.public_key().verify(
        sig.sig[8:], b"cosignature/v1\ntime 1679315147\n" + text
    )  # the exact message of the spec
    assert cosigned_message(text, 7) == b"cosignature/v1\ntime 7\n" + text
    note = parse_note(format_note(text, [sig]))
    assert verified_cosigners(note, [w.verifier(ED25519)]) == [w.verifier(COSIGNATURE_V1)]
    # Another checkpoint, or another time, does not carry the same cosignature.
    other = Checkpoint("example.com/log", 6, bytes(32)).text()
    with pytest.raises(NoteError, match="invalid signature"):
        verified_cosigners(parse_note(format_note(other, [sig])), [w.verifier()])
    forged = Signature(sig.name, sig.key_id, (1679315148).to_bytes(8, "big") + sig.sig[8:])
    with pytest.raises(NoteError):
        verified_cosigners(parse_note(format_note(text, [forged])), [w.verifier()])


def test_checkpoint_text_round_trips_and_bad_bodies_are_refused():
    root = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    text = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = parse_checkpoint(text)
    assert (cp.origin, cp.size, cp.root) == ("example.com/behind-the-sofa", 20852163, root)
    assert cp.text() == text
    for bad in (
        b"origin\n012\n" + text.split(b"\n")[2] + b"\n",  # leading zero
        b"origin\n12\nnot-base64\n",
        b"origin\n12\n" + base64.b64encode(b"short") + b"\n",
        b"origin\n12\n",
    ):
        with pytest.raises(NoteError):
            parse_checkpoint(bad)


def test_tlog_proof_marshals_as_transparency_dev_does():
    h1, h2 = hashlib.sha256(b"hash1").digest(), hashlib.sha256(b"hash2").digest()
    b1, b2 = base64.b64encode(h1).decode(), base64.b64encode(h2).decode()
    extra = base64.b64encode(b"extra information").decode()
    assert (
        TlogProof(5, (h1, h2), b"test checkpoint\n").to_text()
        == f"c2sp.org/tlog-proof@v1\nindex 5\n{b1}\n{b2}\n\ntest checkpoint\n"
    )
    assert (
        TlogProof(10, (h1,), b"checkpoint data\n", extra=b"extra information").to_text()
        == f"c2sp.org/tlog-proof@v1\nextra {extra}\nindex 10\n{b1}\n\ncheckpoint data\n"
    )
    assert TlogProof(0, (), b"checkpoint\n").to_text() == (
        "c2sp.org/tlog-proof@v1\nindex 0\n\ncheckpoint\n"
    )
    back = parse_tlog_proof(f"c2sp.org/tlog-proof@v1\nextra {extra}\nindex 10\n{b1}\n\ncp\n")
    assert (back.index, back.hashes, back.checkpoint, back.extra) == (
        10,
        (h1,),
        b"cp\n",
        b"extra information",
    )
    for bad in (
        "wrong-header\nindex 0\n\ncheckpoint\n",
        "c2sp.org/tlog-proof@v1\n\n\ncheckpoint\n",
        "c2sp.org/tlog-proof@v1\nindex notanumber\n\ncheckpoint\n",
        "c2sp.org/tlog-proof@v1\nindex -5\n\ncheckpoint\n",
        "c2sp.org/tlog-proof@v1\nindex 0\n!!notbase64!!\n\ncheckpoint\n",
        "c2sp.org/tlog-proof@v1\nindex 0\n" + base64.b64encode(bytes(64)).decode() + "\n\ncp\n",
    ):
        with pytest.raises(NoteError):
            parse_tlog_proof(bad)


def test_add_checkpoint_body_is_the_tlog_witness_request():
    # The example request of c2sp.org/tlog-witness.
    proof_lines = [
        "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=",
        "jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=",
        "5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=",
        "/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=",
    ]
    note = (
        b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    )
    body = ("old 20852014\n" + "\n".join(proof_lines) + "\n\n").encode() + note
    old, proof, rest = parse_add_checkpoint(body)
    assert old == 20852014 and rest == note
    assert [base64.b64encode(p).decode() for p in proof] == proof_lines
    assert format_add_checkpoint(old, proof, note) == body
    for bad in (b"old 01\n\n" + note, b"new 1\n\n" + note, b"old 1\nxx\n\n" + note):
        with pytest.raises(NoteError):
            parse_add_checkpoint(bad)
    with pytest.raises(NoteError, match="63"):
        format_add_checkpoint(1, [bytes(32)] * 64, note)


def test_checkpoint_root_is_the_merkle_root_the_ledger_computes():
    leaves = [b"a", b"b", b"c"]
    cp = Checkpoint("o", 3, merkle.root(leaves))
    assert parse_checkpoint(cp.text()).root == merkle.root(leaves)
