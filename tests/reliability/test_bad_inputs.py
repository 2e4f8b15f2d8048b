"""Bad inputs, generated here, sent through the importer, prepare, the engine and the HTTP API.

Each refused input must get a clear error (a stable reason code or a message naming the key or
file and what to do) and leave every store byte for byte as it was: ``data/``, ``privacy/``,
``gallery/``, ``models/`` and ``secrets/`` are hashed before and after (the audit log and the
per-file import reports, which record the refusal itself, are left out).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from badinputs import API_MAX_PIXELS, PAYLOAD_MARKERS, corpus, encode, noise, png_header_only
from harness import VERSION, changes, make_site, store_hashes
from PIL import Image
from typer.testing import CliRunner

from visage_ml.config import ConfigError, ProjectPaths, load_params
from visage_ml.data.importers import ImportBasis, import_dataset
from visage_ml.data.rawstore import RawStore, read_images

LEGAL = "art6(1)(f)+art9(2)(j)"
KNOWN_API_CODES = {
    "invalid_request",
    "invalid_base64",
    "invalid_image",
    "image_too_large",
    "request_too_large",
    "malformed_json",
    "no_face",
    "too_many_faces",
    "multiple_faces",
    "not_found",
    "method_not_allowed",
    "unauthenticated",
    "unknown_subject",
    "not_allowed",
}


def run_import(root: Path, src: Path, **kw):
    basis = ImportBasis.from_options(legal_basis=LEGAL)
    return import_dataset("imagefolder", src, paths=ProjectPaths(root), basis=basis, **kw)


def reasons(result) -> dict[str, str]:
    return {s.rel: s.reason for s in result.skipped}


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# Importer
# ---------------------------------------------------------------------------------------------


def hostile_file_system(src: Path, outside: Path) -> dict[str, str]:
    """File-system kinds of bad input in an import tree; returns file -> expected reason."""
    person = src / "Fs_Person"
    jpg = encode(noise(200), "JPEG")
    put(outside / "elsewhere.jpg", jpg)
    (person / "link.jpg").parent.mkdir(parents=True, exist_ok=True)
    (person / "link.jpg").symlink_to(outside / "elsewhere.jpg")
    (person / "dangling.jpg").symlink_to(outside / "missing.jpg")
    (person / "loop.jpg").symlink_to(person / "loop.jpg")
    (person / "escape.jpg").symlink_to("../../outside/elsewhere.jpg")
    os.mkfifo(person / "pipe.jpg")
    put(person / os.fsdecode(b"latin1-\xe9t\xe9.jpg"), encode(noise(201), "JPEG"))
    put(person / "new\nline.jpg", encode(noise(202), "JPEG"))
    put(person / "tab\there.jpg", encode(noise(203), "JPEG"))
    put(person / "nested" / "deep.jpg", encode(noise(204), "JPEG"))
    put(person / "folder.jpg" / "inner.jpg", encode(noise(208), "JPEG"))
    put(src / "stray.jpg", encode(noise(205), "JPEG"))
    (outside / "linked-person").mkdir()
    put(outside / "linked-person" / "x.jpg", encode(noise(206), "JPEG"))
    (src / "Linked_Person").symlink_to(outside / "linked-person")
    (src / os.fsdecode(b"Bad\xffPerson")).mkdir()
    put(src / os.fsdecode(b"Bad\xffPerson") / "a.jpg", encode(noise(207), "JPEG"))
    return {
        "Fs_Person/link.jpg": "symlink",
        "Fs_Person/dangling.jpg": "symlink",
        "Fs_Person/loop.jpg": "symlink",
        "Fs_Person/escape.jpg": "symlink",
        "Fs_Person/pipe.jpg": "not_a_regular_file",
        "Fs_Person/latin1-\\xe9t\\xe9.jpg": "bad_file_name",
        "Fs_Person/new\nline.jpg": "bad_file_name",
        "Fs_Person/tab\there.jpg": "bad_file_name",
        "Fs_Person/nested/deep.jpg": "unexpected_layout",
        "Fs_Person/folder.jpg/inner.jpg": "unexpected_layout",
        "stray.jpg": "unexpected_layout",
        "Linked_Person": "symlink",
    }


def test_every_refused_kind_is_reported_and_no_store_changes(project, tmp_path):
    first = tmp_path / "first"
    put(first / "Good_Person" / "a.jpg", encode(noise(1000), "JPEG"))
    put(first / "Good_Person" / "b.png", encode(noise(1001), "PNG"))
    assert run_import(project, first).images_imported == 2
    before = store_hashes(project)

    src, outside = tmp_path / "hostile", tmp_path / "outside"
    outside.mkdir()
    expected = hostile_file_system(src, outside)
    refused = [it for it in corpus() if it.importer != "accept"]
    for it in refused:
        put(src / f"Person_{it.kind}" / f"{it.kind}.img", it.data)
        expected[f"Person_{it.kind}/{it.kind}.img"] = it.importer
    params = load_params(project / "params.yaml", overrides={"serving.max_image_pixels": 4_000_000})
    result = run_import(project, src, params=params)

    got = reasons(result)
    # A folder whose name is not UTF-8 is refused as a whole (its files with it).
    bad_person = [k for k in got if k.startswith("Bad\\xffPerson")]
    assert bad_person and {got.pop(k) for k in bad_person} == {"bad_file_name"}
    assert got == expected
    assert result.images_imported == 0 and result.subjects_added == 0
    assert changes(before, store_hashes(project)) == []
    report = json.loads(result.report_path.read_text())
    assert stat.S_IMODE(result.report_path.stat().st_mode) == 0o600
    assert {f["reason"] for f in report["files"]} >= set(expected.values())


def test_unusual_but_valid_kinds_are_stored_as_clean_rgb_png(project, tmp_path):
    src = tmp_path / "unusual"
    accepted = [it for it in corpus() if it.importer == "accept"]
    for it in accepted:
        put(src / f"Person_{it.kind}" / f"{it.kind}.img", it.data)
    result = run_import(project, src)
    assert reasons(result) == {}
    assert result.images_imported == len(accepted) == result.subjects_added
    paths = ProjectPaths(project)
    images = read_images(paths.raw)
    stored = sorted(paths.raw.rglob("*.sealed"))
    assert len(stored) == len(images) == len(accepted)
    raw_store = RawStore(paths, track=False)
    for png in stored:
        data = raw_store.read_image(png.parent.name, png.stem)  # the sealed PNG, decrypted
        for marker in PAYLOAD_MARKERS:
            assert marker not in data, (png.name, marker)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert getattr(im, "n_frames", 1) == 1 and not im.getexif()
    # The EXIF-rotated 80x48 photos are stored upright (48 wide, 80 high) where 5..8 rotate.
    sizes = {(int(w), int(h)) for w, h in zip(images["width"], images["height"], strict=True)}
    assert (48, 80) in sizes and (80, 48) in sizes
    # Nothing of the polyglots' payloads reached data/ or the ledger.
    for f in [*paths.data.rglob("*"), paths.ledger]:
        if f.is_file():
            blob = f.read_bytes()
            assert b"polyglot-payload-marker" not in blob and b"Zelda" not in blob, f


def test_csv_paths_that_leave_the_data_set_are_refused(project, tmp_path):
    base = tmp_path / "ff"
    put(base / "train" / "ok.jpg", encode(noise(300), "JPEG"))
    put(tmp_path / "secret.jpg", encode(noise(301), "JPEG"))
    (base / "train" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (base / "linkdir").symlink_to(tmp_path)
    rows = [
        "file,age,gender,race,service_test",
        "train/ok.jpg,20-29,Female,White,True",
        "../secret.jpg,20-29,Female,White,True",
        "/etc/passwd,20-29,Female,White,True",
        "..\\..\\secret.jpg,20-29,Female,White,True",
        "C:/secret.jpg,20-29,Female,White,True",
        "train/../../secret.jpg,20-29,Female,White,True",
        "train/link.jpg,20-29,Female,White,True",
        "linkdir/secret.jpg,20-29,Female,White,True",
        "train/missing.jpg,20-29,Female,White,True",
        "train/ok.jpg,999,Alien,Martian,True",
    ]
    (base / "labels.csv").write_text("\n".join(rows) + "\n")
    basis = ImportBasis.from_options(legal_basis=LEGAL)
    result = import_dataset(
        "fairface", base / "labels.csv", paths=ProjectPaths(project), basis=basis
    )
    got = reasons(result)
    for rel in (
        "../secret.jpg",
        "/etc/passwd",
        "..\\..\\secret.jpg",
        "C:/secret.jpg",
        "train/../../secret.jpg",
    ):
        assert got[rel] == "path_traversal", rel
    assert got["train/link.jpg"] == got["linkdir/secret.jpg"] == "symlink"
    assert got["train/missing.jpg"] == "missing_file"
    assert result.images_imported == 1
    secret = (tmp_path / "secret.jpg").read_bytes()
    for f in ProjectPaths(project).data.rglob("*"):
        assert not f.is_file() or f.read_bytes() != secret


# ---------------------------------------------------------------------------------------------
# HTTP API
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def site(project):
    return make_site(
        project,
        enrol=6,
        overrides={
            "serving.max_image_pixels": API_MAX_PIXELS,
            "serving.max_request_bytes": 600_000,
        },
    )


def error_code(r) -> str | None:
    if r.status_code == 200:
        return None
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    return body["error"]["code"]


def test_image_corpus_through_identify_analytics_and_enroll(site):
    client = site.client()
    op = site.headers("operator")
    good = site.photo_b64(site.pids[8])[0]
    before = store_hashes(site.root)
    statuses = []
    for it in corpus():
        for path, body in (
            ("/v1/identify", {"image": it.b64}),
            ("/v1/analytics", {"image": it.b64}),
        ):
            r = client.post(path, json=body, headers=op)
            code = error_code(r)
            statuses.append(r.status_code)
            if it.api == "decode":
                assert r.status_code == 200 or code in ("no_face", "too_many_faces"), (it.kind, r)
            else:
                assert (r.status_code, code) == it.api, (it.kind, path, r.text)
        if it.api != "decode":
            r = client.post(
                "/v1/enroll", json={"pid": site.pids[8], "images": [good, it.b64]}, headers=op
            )
            assert r.status_code == it.api[0], (it.kind, r.text)
            assert re.search(r"images(\[1\]|\.1)", r.json()["error"]["message"]), it.kind
        assert changes(before, store_hashes(site.root)) == [], it.kind
    assert max(statuses) < 500


def raw_requests(site) -> list[tuple[str, str, str, dict, int, str]]:
    """(kind, method, path, request kwargs, status, code) of malformed HTTP requests."""
    op, dpo, aud = site.headers("operator"), site.headers("dpo"), site.headers("auditor")
    js = {"Content-Type": "application/json"}
    img = site.photo_b64(site.pids[0])[0]
    pid = site.pids[1]
    rid = "r20260101-0000abcd"
    return [
        (
            "json_nesting_bomb",
            "POST",
            "/v1/identify",
            {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {**op, **js}},
            400,
            "malformed_json",
        ),
        (
            "json_not_utf8",
            "POST",
            "/v1/identify",
            {"content": b'{"image":"\xff\xfe"}', "headers": {**op, **js}},
            400,
            "malformed_json",
        ),
        (
            "json_truncated",
            "POST",
            "/v1/identify",
            {"content": b'{"image": ', "headers": {**op, **js}},
            400,
            "malformed_json",
        ),
        (
            "json_nan_int",
            "POST",
            "/v1/identify",
            {"content": f'{{"image":"{img}","top_k":NaN}}'.encode(), "headers": {**op, **js}},
            422,
            "invalid_request",
        ),
        (
            "json_infinite_int",
            "POST",
            "/v1/identify",
            {"content": f'{{"image":"{img}","top_k":1e400}}'.encode(), "headers": {**op, **js}},
            422,
            "invalid_request",
        ),
        (
            "top_k_as_string",
            "POST",
            "/v1/identify",
            {"json": {"image": img, "top_k": "5"}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "top_k_as_bool",
            "POST",
            "/v1/identify",
            {"json": {"image": img, "top_k": True}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "flag_as_integer",
            "POST",
            f"/v1/subjects/{pid}/requests",
            {"json": {"right": "access", "lift": 0}, "headers": dpo},
            422,
            "invalid_request",
        ),
        (
            "unknown_query_parameter",
            "GET",
            "/v1/ledger?after_sq=5",
            {"headers": aud},
            422,
            "invalid_request",
        ),
        (
            "unknown_query_parameter_unauthenticated",
            "GET",
            "/healthz?debug=1",
            {},
            422,
            "invalid_request",
        ),
        (
            "negative_top_k",
            "POST",
            "/v1/identify",
            {"json": {"image": img, "top_k": -1}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "huge_int_top_k",
            "POST",
            "/v1/identify",
            {"json": {"image": img, "top_k": 10**40}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "lone_surrogate",
            "POST",
            "/v1/identify",
            {"content": b'{"image":"\\ud800"}', "headers": {**op, **js}},
            422,
            "invalid_request",
        ),
        (
            "nul_in_base64",
            "POST",
            "/v1/identify",
            {"content": b'{"image":"AA\\u0000AA"}', "headers": {**op, **js}},
            422,
            "invalid_base64",
        ),
        (
            "data_url_prefix",
            "POST",
            "/v1/identify",
            {"json": {"image": "data:image/png;base64," + img}, "headers": op},
            422,
            "invalid_base64",
        ),
        (
            "empty_image_string",
            "POST",
            "/v1/identify",
            {"json": {"image": ""}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "body_is_a_list",
            "POST",
            "/v1/identify",
            {"json": [img], "headers": op},
            422,
            "invalid_request",
        ),
        (
            "body_is_null",
            "POST",
            "/v1/identify",
            {"content": b"null", "headers": {**op, **js}},
            422,
            "invalid_request",
        ),
        (
            "form_encoded",
            "POST",
            "/v1/identify",
            {
                "content": b"image=abc",
                "headers": {**op, "Content-Type": "application/x-www-form-urlencoded"},
            },
            422,
            "invalid_request",
        ),
        (
            "multipart_upload",
            "POST",
            "/v1/identify",
            {"files": {"image": ("a.png", b"xx")}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "unknown_field",
            "POST",
            "/v1/identify",
            {"json": {"image": img, "debug": True}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "body_over_limit",
            "POST",
            "/v1/identify",
            {"json": {"image": "A" * 700_000}, "headers": op},
            413,
            "request_too_large",
        ),
        (
            "content_length_lie",
            "POST",
            "/v1/identify",
            {"content": b'{"image":"x"}', "headers": {**op, **js, "Content-Length": "99999999999"}},
            413,
            "request_too_large",
        ),
        (
            "content_length_not_a_number",
            "POST",
            "/v1/identify",
            {"content": b'{"image":"x"}', "headers": {**op, **js, "Content-Length": "12abc"}},
            400,
            "bad_request",
        ),
        (
            "enrol_too_many_images",
            "POST",
            "/v1/enroll",
            {"json": {"pid": pid, "images": [img] * 21}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "enrol_no_images",
            "POST",
            "/v1/enroll",
            {"json": {"pid": pid, "images": []}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "pid_traversal",
            "POST",
            "/v1/enroll",
            {"json": {"pid": "../../secrets", "images": [img]}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "pid_uppercase",
            "POST",
            "/v1/enroll",
            {"json": {"pid": pid.upper(), "images": [img]}, "headers": op},
            422,
            "invalid_request",
        ),
        (
            "pid_nul_in_path",
            "GET",
            "/v1/subjects/p%000000000000000",
            {"headers": dpo},
            422,
            "invalid_request",
        ),
        (
            "certificate_traversal_encoded",
            "GET",
            "/v1/certificates/..%2f..%2fsecrets%2fmaster.key",
            {"headers": aud},
            404,
            "not_found",
        ),
        (
            "certificate_traversal",
            "GET",
            "/v1/certificates/../../secrets/master.key",
            {"headers": aud},
            404,
            "not_found",
        ),
        (
            "certificate_dotfile",
            "GET",
            "/v1/certificates/..json",
            {"headers": aud},
            404,
            "not_found",
        ),
        (
            "certificate_nul",
            "GET",
            "/v1/certificates/a%00.json",
            {"headers": aud},
            404,
            "not_found",
        ),
        (
            "certificate_long_name",
            "GET",
            "/v1/certificates/" + "a" * 5000,
            {"headers": aud},
            404,
            "not_found",
        ),
        (
            "ledger_negative_cursor",
            "GET",
            "/v1/ledger?after_seq=-99999999999999999999",
            {"headers": aud},
            422,
            "invalid_request",
        ),
        (
            "ledger_zero_limit",
            "GET",
            "/v1/ledger?limit=0",
            {"headers": aud},
            422,
            "invalid_request",
        ),
        (
            "ledger_long_type",
            "GET",
            "/v1/ledger?type=" + "x" * 1000,
            {"headers": aud},
            422,
            "invalid_request",
        ),
        (
            "request_time_before_year_1",
            "POST",
            f"/v1/subjects/{pid}/requests",
            {
                "json": {"right": "access", "received_at": "0001-01-01T00:00:00+14:00"},
                "headers": dpo,
            },
            409,
            "not_allowed",
        ),
        (
            "request_time_after_9999",
            "POST",
            f"/v1/subjects/{pid}/requests",
            {
                "json": {"right": "access", "received_at": "9999-12-31T23:59:59-14:00"},
                "headers": dpo,
            },
            409,
            "not_allowed",
        ),
        (
            "request_time_words",
            "POST",
            f"/v1/subjects/{pid}/requests",
            {"json": {"right": "access", "received_at": "yesterday"}, "headers": dpo},
            409,
            "not_allowed",
        ),
        (
            "request_time_future",
            "POST",
            f"/v1/subjects/{pid}/requests",
            {"json": {"right": "access", "received_at": "2999-01-01T00:00:00Z"}, "headers": dpo},
            409,
            "not_allowed",
        ),
        (
            "erasure_time_out_of_range",
            "POST",
            f"/v1/subjects/{pid}/erasure",
            {"json": {"received_at": "0001-01-01T00:00:00+14:00"}, "headers": dpo},
            409,
            "not_allowed",
        ),
        (
            "extend_nan_days",
            "POST",
            f"/v1/requests/{rid}/extend",
            {"content": b'{"days":NaN,"reason_code":"x"}', "headers": {**dpo, **js}},
            422,
            "invalid_request",
        ),
        (
            "free_text_reason",
            "POST",
            f"/v1/requests/{rid}/deny",
            {"json": {"reason_code": "Zelda asked nicely"}, "headers": dpo},
            422,
            "invalid_request",
        ),
        (
            "api_key_not_ascii",
            "GET",
            "/v1/ledger",
            {"headers": {"X-API-Key": b"vk_\xff\xfe"}},
            401,
            "unauthenticated",
        ),
        (
            "api_key_huge",
            "GET",
            "/v1/ledger",
            {"headers": {"X-API-Key": "vk_" + "a" * 100_000}},
            401,
            "unauthenticated",
        ),
        ("method_not_allowed", "PUT", "/v1/identify", {"headers": op}, 405, "method_not_allowed"),
    ]


def test_malformed_requests_get_a_clear_4xx_and_change_nothing(site):
    client = site.client()
    before = store_hashes(site.root)
    cases = raw_requests(site)
    for kind, method, path, kw, status, code in cases:
        r = client.request(method, path, **kw)
        assert (r.status_code, error_code(r)) == (status, code), (kind, r.text[:300])
        assert code in KNOWN_API_CODES | {"bad_request"}
        assert changes(before, store_hashes(site.root)) == [], kind
    audit = (site.paths.privacy / "audit.jsonl").read_text().splitlines()
    # Each is audited but /healthz without a key, which is counted in the metrics only.
    keyless = [c for c in cases if c[2].startswith("/healthz") and not c[3].get("headers")]
    assert len(keyless) == 1
    assert len(audit) == len(cases) - len(keyless)
    text = "\n".join(audit)
    assert "Zelda" not in text and site.keys["operator"] not in text


# ---------------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------------

ARRAYS = {
    "float_nan": np.full((64, 64, 3), np.nan),
    "float_inf": np.full((64, 64, 3), np.inf),
    "negative_int": np.full((64, 64, 3), -5, dtype=np.int64),
    "int_over_255": np.full((64, 64, 3), 300, dtype=np.int64),
    "bool": np.ones((64, 64, 3), dtype=bool),
    "five_channels": np.zeros((64, 64, 5), dtype=np.uint8),
    "one_dimensional": np.zeros((10,), dtype=np.uint8),
    "object_dtype": np.array([[1, "a"]], dtype=object),
}
CROPS = {
    "float_crops": np.zeros((2, 32, 32, 3), dtype=np.float32),
    "nan_crops": np.full((2, 32, 32, 3), np.nan),
    "four_channel_crops": np.zeros((2, 32, 32, 4), dtype=np.uint8),
    "zero_size_crops": np.zeros((1, 0, 0, 3), dtype=np.uint8),
    "flat_crop": np.zeros((32, 32), dtype=np.uint8),
}


def test_engine_refuses_what_is_not_an_image_with_a_clear_message(site):
    engine = site.engine
    for kind, arr in ARRAYS.items():
        with pytest.raises(ValueError, match="expected an 8-bit image") as err:
            engine.detect(arr)
        assert "uint8" in str(err.value), kind
    for crops in CROPS.values():
        for call in (engine.embed, engine.predict):
            with pytest.raises(ValueError, match="expected aligned uint8 RGB crops"):
                call(crops)
    # Degenerate but valid images: no face, no error.
    for shape in ((0, 0, 3), (1, 1, 3), (1, 4000, 3), (4000, 1, 3), (64, 64), (64, 64, 4)):
        assert engine.detect(np.zeros(shape, dtype=np.uint8)) == []
    assert engine.embed(np.zeros((0, 32, 32, 3), dtype=np.uint8)).shape == (0, 64)


def test_mtcnn_survives_degenerate_images():
    from visage_ml.data.detect import FaceDetector

    detector = FaceDetector(device="cpu", min_face_size=20)
    images = [
        np.zeros((h, w, 3), dtype=np.uint8) for h, w in ((1, 1), (11, 11), (2, 900), (900, 2))
    ]
    rng = np.random.default_rng(0)
    images.append(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for im in images:
        assert detector.detect([im]) == [[]]


# ---------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------


def nan_embedder(size: int, dim: int) -> bytes:
    """A visage embedder (valid metadata) whose weights are NaN: it loads, then emits NaN."""
    from evaluate_fakes import _common_meta, _model
    from onnx import TensorProto, helper, numpy_helper

    flat = 3 * size * size
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])
    w = numpy_helper.from_array(np.full((flat, dim), np.nan, dtype=np.float32), "w")
    model = _model(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["embedding"]),
        ],
        [x],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [w],
        {**_common_meta("embedder", size, VERSION), "visage.embedding_dim": str(dim)},
    )
    return model.SerializeToString()


def plain_onnx() -> bytes:
    """A valid ONNX model that is not a visage model (no metadata)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def torch_file(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def model_cases(models: Path) -> dict[str, tuple[bytes, str]]:
    """kind -> (bytes of models/embedder.onnx, expected message fragment)."""
    good = (models / "embedder.onnx").read_bytes()
    return {
        "zero_byte_onnx": (b"", "not a readable ONNX model"),
        "garbage_onnx": (b"\x00garbage" * 64, "not a readable ONNX model"),
        "truncated_onnx": (good[: len(good) // 2], "not a readable ONNX model"),
        "wrong_kind_onnx": ((models / "demographics.onnx").read_bytes(), "'demographics' model"),
        "foreign_onnx": (plain_onnx(), "not a visage-ml one"),
        "torch_checkpoint_as_onnx": (torch_file({"a": 1}), "not a readable ONNX model"),
        "text_as_onnx": (b"ir_version: 8\n", "not a readable ONNX model"),
    }


def test_wrong_model_files_are_refused_before_serving(project):
    from visage_ml.inference import ModelFileError, ModelHashError
    from visage_ml.serving.engine import Engine

    # params.yaml describing the tiny test models, so that only the file itself is at fault.
    site = make_site(
        project,
        overrides={
            "train_embedder.input_size": 32,
            "train_embedder.embedding_dim": 64,
            "train_demographics.input_size": 32,
            "prepare.image_size": 32,
        },
    )

    paths = site.paths
    models = paths.models
    original = (models / "embedder.onnx").read_bytes()
    cases = model_cases(models)
    for kind, (data, fragment) in cases.items():
        (models / "embedder.onnx").write_bytes(data)
        before = store_hashes(site.root)
        with pytest.raises(ModelFileError) as err:
            Engine.from_project(paths, site.params).load()
        assert fragment in str(err.value) and "embedder.onnx" in str(err.value), kind
        assert changes(before, store_hashes(site.root)) == [], kind
    # A model changed after export: the hash recorded in reports/export.json no longer fits.
    (models / "embedder.onnx").write_bytes(original)
    digest = __import__("hashlib").sha256(original).hexdigest()
    (paths.reports).mkdir(exist_ok=True)
    export = {"embedder": {"onnx_sha256": digest}, "demographics": {}}
    (paths.reports / "export.json").write_text(json.dumps(export))
    Engine.from_project(paths, site.params).load("embedder")  # the recorded file: accepted
    (models / "embedder.onnx").write_bytes(original + b"\x00")
    with pytest.raises(ModelHashError, match="was changed or replaced"):
        Engine.from_project(paths, site.params).load("embedder")
    (paths.reports / "export.json").write_text("{not json")
    with pytest.raises(ModelHashError, match=r"export\.json is unreadable"):
        Engine.from_project(paths, site.params).load("embedder")


def test_a_model_that_emits_nan_is_refused_at_first_use(site):
    from visage_ml.inference import ModelFileError, OnnxModel

    path = site.paths.models / "embedder.onnx"
    path.write_bytes(nan_embedder(32, 64))
    model = OnnxModel(path, expected_kind="embedder")  # metadata is fine
    with pytest.raises(ModelFileError, match="non-finite"):
        model.embed(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    # Served: a clean 503, the template store untouched.
    from harness import fake_engine

    site.engine = fake_engine(site.root, embedder=lambda: OnnxModel(path))
    client = site.client()
    before = store_hashes(site.root)
    r = client.post(
        "/v1/enroll",
        json={"pid": site.pids[9], "images": site.photo_b64(site.pids[9], 2)},
        headers=site.headers("operator"),
    )
    assert (r.status_code, error_code(r)) == (503, "model_error")
    assert changes(before, store_hashes(site.root)) == []


CHECKPOINTS = {
    "empty_checkpoint": b"",
    "garbage_checkpoint": b"PK\x03\x04 not really a zip",
    "tensor_not_dict": None,
    "plain_pickle": __import__("pickle").dumps({"kind": "embedder"}),
}


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_checkpoints_are_loaded_without_running_code(tmp_path, monkeypatch):
    import torch

    from visage_ml.models.checkpoint import load_model

    monkeypatch.chdir(tmp_path)
    cases = dict(CHECKPOINTS)
    cases["tensor_not_dict"] = torch_file(torch.zeros(3))
    cases["pickled_code"] = torch_file({"kind": "embedder", "x": _Evil()})
    for kind, data in cases.items():
        p = tmp_path / f"{kind}.pt"
        p.write_bytes(data)
        with pytest.raises(ValueError, match="not a readable visage-ml checkpoint") as err:
            load_model(p)
        assert "weights_only=False" not in str(err.value), kind
    assert not (tmp_path / "pwned-by-pickle").exists()


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

BAD_PARAMS = {
    "nan": ("lr: 0.006", "lr: .nan", "train_embedder.lr"),
    "inf": ("lr: 0.006", "lr: .inf", "train_embedder.lr"),
    "negative_inf": ("min_cosine: 0.9999", "min_cosine: -.inf", "export.min_cosine"),
    "negative_int": ("epochs: 10", "epochs: -3", "train_embedder.epochs"),
    "negative_float": ("weight_decay: 0.05", "weight_decay: -0.05", "train_embedder.weight_decay"),
    "zero_batch": ("batch_size: 64", "batch_size: 0", "train_embedder.batch_size"),
    "huge_int": (
        "n_identities: 300",
        "n_identities: 99999999999999999999999",
        "synth.n_identities",
    ),
    "number_as_string": ("lr: 0.006", "lr: '0.006'", "train_embedder.lr"),
    "bool_as_int": ("epochs: 10", "epochs: true", "train_embedder.epochs"),
    "null_value": ("epochs: 10", "epochs: null", "train_embedder.epochs"),
    "nan_in_list": (
        "group_shares: [0.5, 0.25, 0.15, 0.10]",
        "group_shares: [.nan, 0.25, 0.15, 0.10]",
        "synth.group_shares[0]",
    ),
    "unknown_nested_key": ("epochs: 10", "epochs: 10\n  epochz: 7", "train_embedder.epochz"),
    "duplicate_key": ("epochs: 10", "epochs: 10\n  epochs: 7", "'epochs' is given twice"),
    "duplicate_section": ("privacy:", "prepare: {}\nprivacy:", "'prepare' is given twice"),
    "split_over_one": (
        "split: {val: 0.1, test: 0.25}",
        "split: {val: 0.6, test: 0.5}",
        "prepare.split.test",
    ),
    "port_out_of_range": ("port: 8000", "port: 70000", "serving.port"),
    "unknown_choice": ("mode: full", "mode: everything", "serving.mode"),
    "python_object_tag": (
        "lr: 0.006",
        "lr: !!python/object/apply:os.system ['touch pwned']",
        "not valid YAML",
    ),
    "tab_indentation": ("  seed:", "\tseed:", "not valid YAML"),
}
WHOLE_FILES = {
    "top_level_list": (b"- a\n- b\n", "top level must be a mapping"),
    "not_utf8": (b"project:\n  controller: \xff\xfe\n", "not valid YAML"),
    "binary": (b"\x00\x01\x02\x03", "not valid YAML"),
    "deep_nesting": (b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n", "not valid YAML"),
    "alias_bomb": (
        b"bomb: [&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a],"
        b" &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c],"
        b" &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]]\n",
        "key 'bomb'",
    ),
}


def bad_param_files(original: str) -> dict[str, tuple[bytes, str]]:
    out = {}
    for kind, (old, new, fragment) in BAD_PARAMS.items():
        assert old in original, kind
        out[kind] = (original.replace(old, new, 1).encode(), fragment)
    return {**out, **WHOLE_FILES}


def test_bad_params_are_refused_by_every_entry_point(site, monkeypatch, tmp_path):
    from visage_ml.app.cli import app
    from visage_ml.app.stages import prepare

    monkeypatch.chdir(tmp_path)
    params_file = site.root / "params.yaml"
    original = params_file.read_text()
    runner = CliRunner()
    for kind, (data, fragment) in bad_param_files(original).items():
        params_file.write_bytes(data)
        before = store_hashes(site.root)
        with pytest.raises(ConfigError) as err:
            load_params(params_file)
        message = str(err.value)
        assert fragment in message and str(params_file) in message, (kind, message)
        assert len(message) < 2000, kind
        result = runner.invoke(app, ["config", "validate"])
        assert result.exit_code == 2 and "Traceback" not in result.output, kind
        assert prepare.main() == 2, kind
        result = runner.invoke(app, ["serve", "--port", "1"])
        assert result.exit_code == 2, (kind, result.output)
        assert changes(before, store_hashes(site.root)) == [], kind
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# prepare on a damaged data/raw
# ---------------------------------------------------------------------------------------------


def test_prepare_names_a_damaged_raw_image_and_leaves_no_crops_behind(project, capsys):
    from rights_fakes import make_project

    from visage_ml.app.stages import prepare

    proj = make_project(project, n_subjects=4, enrol=False)  # with an earlier data/processed
    paths = proj.paths
    victim = sorted(paths.raw.glob("p*/*.sealed"))[0]
    good = victim.read_bytes()
    keys = proj.core.data_keys
    png = RawStore(paths, core=proj.core).read_image(victim.parent.name, victim.stem)

    def sealed(data: bytes) -> bytes:  # damaged image bytes, properly sealed
        return keys.seal_raw(victim.parent.name, victim.stem, data)

    damages = {
        "truncated_raw_png": sealed(png[: len(png) // 2]),
        "text_as_raw_png": sealed(b"not an image"),
        "raw_png_header_bomb": sealed(png_header_only(200_000, 200_000)),
        "truncated_ciphertext": good[: len(good) // 2],
        "plain_text_file": b"not an image",
    }
    for kind, data in damages.items():
        victim.write_bytes(data)
        before = store_hashes(project)
        assert prepare.main() == 2, kind
        err = capsys.readouterr().err
        rel = victim.relative_to(project).as_posix()
        assert rel in err and "dvc checkout data/raw" in err, (kind, err)
        assert changes(before, store_hashes(project)) == [], kind
    victim.write_bytes(good)
    shutil.rmtree(paths.processed, ignore_errors=True)
