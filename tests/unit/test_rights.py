"""Access/portability export, rectification, restriction and objection as requests."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pyrage
import pytest
from PIL import Image
from project_helpers import cached_object, follow_first_advice
from pyrage import x25519
from rights_fakes import REF, PrepareTileDetector, http_caller, make_project, png
from serving_fakes import THRESHOLD, face_tile, scene
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.app.stages import prepare
from visage_ml.data.rawstore import RawDataMissingError, RawStore, read_images, read_subjects
from visage_ml.inference import ModelFileError
from visage_ml.io import sha256_file
from visage_ml.privacy.core import NothingChangedError, PrivacyCore
from visage_ml.privacy.datakeys import NoDataKeyError
from visage_ml.privacy.requests import RequestBook, RequestStateError
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.export import (
    MSG_DELIVERY,
    Delivery,
    bundle_schema,
    bundles_of,
    export_subject,
    open_delivered,
    read_bundle,
    validate_bundle,
)
from visage_ml.rights.rectify import attributes_mac, rectify
from visage_ml.rights.runner import object_to, restrict, run_request
from visage_ml.rights.sealing import doctor, open_sealed_file

# The requester's age key pair (they keep the secret; the controller gets the public key).
IDENTITY = x25519.Identity.generate()
SECRET, PUBLIC = str(IDENTITY), str(IDENTITY.to_public())
FOR_REQUESTER = Delivery(recipients=(PUBLIC,))
PLAIN = Delivery(plaintext=True)
TO_HIM = {"recipient": PUBLIC}  # an HTTP export's delivery


@pytest.fixture
def proj(project):
    return make_project(project)


def test_export_bundle_has_everything_and_validates_against_its_own_schema(proj, tmp_path):
    pid = proj.pids[0]
    out = tmp_path / "out" / "bundle.zip.age"
    result = export_subject(proj.paths, pid, out=out, core=proj.core, delivery=FOR_REQUESTER)
    assert out.stat().st_mode & 0o777 == 0o600
    # Encrypted for the requester: no zip, no PNG, no reference readable without their key.
    blob = out.read_bytes()
    assert blob.startswith(b"age-encryption.org/v1") and b"PK\x03\x04" not in blob
    assert b"\x89PNG" not in blob and REF.encode() not in blob
    with pytest.raises(ValueError, match="AGE-SECRET-KEY"):
        validate_bundle(out)
    doc = validate_bundle(out, identity=SECRET)
    manifest = doc["manifest"]
    assert manifest["pid"] == pid and manifest["controller"]["name"]
    assert manifest["schema_version"] == "1.1" and manifest["request_id"] == result.request_id
    subject = doc["subject"]
    assert subject["identity"]["external_ref"] == REF
    assert subject["attributes"]["age"] == 20 and subject["attributes"]["n_images"] == 3
    assert {h["type"] for h in subject["history"]} >= {"subject.added", "consent.given"}
    with zipfile.ZipFile(io.BytesIO(open_delivered(blob, identity=SECRET))) as z:
        for item in subject["images"]:
            assert z.read(item["file"]) == proj.images[pid][item["image_id"]]
    # The biometric template, decodable with the documented recipe, is the gallery's own.
    (tpl,) = doc["templates"]["templates"]
    vec = np.frombuffer(base64.b64decode(tpl["vector"]), "<f4")
    stored, _ = proj.gallery().template(pid)
    np.testing.assert_array_equal(vec, stored)
    assert tpl["model_version"] == "emb-test-1" and tpl["metric"] == "cosine"
    assert tpl["threshold"] == THRESHOLD and tpl["embedding_dim"] == vec.shape[0]
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
    # The anchor template (what an operator's re-enrolment must also match) is theirs too.
    (anchor,) = doc["templates"]["anchors"]
    gallery = proj.gallery()
    np.testing.assert_array_equal(
        np.frombuffer(base64.b64decode(anchor["vector"]), "<f4"), gallery.anchor(pid)[0]
    )
    sealed_anchor = gallery.anchor_path(pid).read_bytes()
    assert anchor["stored_sha256"] == hashlib.sha256(sealed_anchor).hexdigest()
    assert anchor["model_version"] == "emb-test-1" and anchor["metric"] == "cosine"
    processing = doc["processing"]
    assert [e["type"] for e in processing["gallery_enrolments"]] == ["gallery.enrolled"]
    assert processing["processed"]["in_processed_data"] is True
    # The ledger holds the bundle's hash, never its content.
    (exported,) = [e for e in proj.core.ledger.entries() if e.type == "access.exported"]
    assert exported.payload["bundle_sha256"] == result.bundle_sha256
    assert exported.payload["delivered_sha256"] == result.sha256 == hashlib.sha256(blob).hexdigest()
    assert exported.payload["delivery"] == "age-x25519"
    assert not [e for e in proj.core.ledger.entries() if e.type == "export.plaintext_released"]
    assert REF.encode() not in proj.paths.ledger.read_bytes()
    st = RequestBook(proj.core).get(result.request_id)
    assert st.status == "completed" and st.right == "access"
    # Art. 15(1): purposes, recipients, retention, source, the right to complain, from the
    # records of processing, and a page a person can read beside the JSON.
    info = doc["information"]
    assert set(info["purposes"]) == {"identification", "training", "evaluation", "analytics"}
    assert info["recipients"] and info["retention"]["biometric_template"].startswith("12 month")
    assert "test" in info["source"] and "Art. 77" in info["right_to_complain"]["text"]
    assert info["identification_events"] == []
    with zipfile.ZipFile(io.BytesIO(open_delivered(blob, identity=SECRET))) as z:
        page = z.read("index.html").decode()
        assert hashlib.sha256(z.read("index.html")).hexdigest() == manifest["files"]["index.html"]
    assert pid in page and "lodge a complaint" in page and "Your rights" in page


def test_altered_bundle_fails_validation(proj, tmp_path):
    out = tmp_path / "b.zip"
    export_subject(proj.paths, proj.pids[1], out=out, core=proj.core, delivery=PLAIN)
    parts = {}
    with zipfile.ZipFile(out) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    # Content that breaks the schema, with the manifest hash updated to match.
    templates = json.loads(parts["templates.json"])
    templates["templates"][0]["dtype"] = "float64"
    parts["templates.json"] = json.dumps(templates).encode()
    manifest = json.loads(parts["manifest.json"])
    manifest["files"]["templates.json"] = hashlib.sha256(parts["templates.json"]).hexdigest()
    parts["manifest.json"] = json.dumps(manifest).encode()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in parts.items():
            z.writestr(n, data)
    with pytest.raises(jsonschema.ValidationError):
        validate_bundle(bad)
    # A file changed without updating the manifest is caught by its hash.
    parts["subject.json"] = parts["subject.json"].replace(b"test", b"tost")
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in parts.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match=r"subject\.json"):
        validate_bundle(bad)


def test_schema_json_is_the_generated_schema_and_rejects_malformed_content(proj, tmp_path):
    out = tmp_path / "b.zip"
    export_subject(proj.paths, proj.pids[0], out=out, core=proj.core, delivery=PLAIN)
    doc = read_bundle(out)
    schema = doc.pop("schema")
    assert schema == bundle_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)

    def broken(change):
        bad = json.loads(json.dumps(doc))
        change(bad)
        return bad

    malformed = [
        broken(lambda d: d["subject"]["state"]["purposes"].pop("identification")),
        broken(lambda d: d["subject"]["state"]["purposes"]["training"].pop("reason")),
        broken(lambda d: d["manifest"].update(pid="Zelda")),
        broken(lambda d: d["manifest"].update(files={})),
        broken(lambda d: d["manifest"].update(articles=None)),
        broken(lambda d: d["subject"]["images"][0].update(file="x.png")),
        broken(lambda d: d["templates"]["templates"][0].update(embedding_dim=0)),
        broken(lambda d: d["templates"]["templates"][0].update(stored_sha256=None)),
        broken(lambda d: d["processing"].pop("ledger_events")),
        broken(lambda d: d["subject"]["history"][0].update(seq=-1)),
    ]
    for bad in malformed:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)


def test_export_answers_a_verified_request_and_refuses_an_unverified_one(proj):
    book = RequestBook(proj.core)
    pid = proj.pids[2]
    st = book.receive(pid, "portability", channel="web_form")
    with pytest.raises(RequestStateError, match="verify"):
        export_subject(
            proj.paths, pid, request_id=st.request_id, core=proj.core, delivery=FOR_REQUESTER
        )
    book.verify(st.request_id)
    result = export_subject(
        proj.paths, pid, request_id=st.request_id, core=proj.core, delivery=FOR_REQUESTER
    )
    exports = proj.paths.root / "privacy" / "exports"
    assert result.path == exports / f"{st.request_id}.zip.age"
    assert exports.stat().st_mode & 0o777 == 0o700
    assert read_bundle(result.path, identity=SECRET)["manifest"]["request_id"] == st.request_id
    assert book.get(st.request_id).status == "completed"
    Erasure(proj.paths, core=proj.core).erase(pid)
    assert not result.path.exists()  # found through the owners index, though unreadable to us
    with pytest.raises(ValueError, match="erased"):
        export_subject(proj.paths, pid, core=proj.core, delivery=FOR_REQUESTER)


def test_export_needs_an_explicit_delivery_and_records_a_plaintext_one(proj, tmp_path):
    pid = proj.pids[3]
    seq = len(list(proj.core.ledger.entries()))
    for bad, message in (
        (Delivery(), "--recipient age1"),
        (Delivery(recipients=(PUBLIC,), plaintext=True), "not several"),
        (Delivery(recipients=("age1nonsense",)), "not an age X25519 recipient"),
        (Delivery(passphrase=""), "empty"),
    ):
        with pytest.raises(ValueError, match=message):
            export_subject(proj.paths, pid, core=proj.core, delivery=bad)
    assert MSG_DELIVERY.startswith("an export bundle holds")
    # Refused before anything was recorded: no request, no event.
    assert len(list(proj.core.ledger.entries())) == seq
    # A passphrase (age scrypt) opens only with that passphrase.
    result = export_subject(proj.paths, pid, core=proj.core, delivery=Delivery(passphrase="pw1"))
    assert validate_bundle(result.path, passphrase="pw1")["manifest"]["pid"] == pid
    with pytest.raises(pyrage.DecryptError):
        validate_bundle(result.path, passphrase="wrong")
    # --plaintext: the zip in clear, and the ledger says so with its hash.
    plain = export_subject(proj.paths, pid, core=proj.core, delivery=PLAIN)
    (released,) = [e for e in proj.core.ledger.entries() if e.type == "export.plaintext_released"]
    assert released.pid == pid
    assert released.payload["bundle_sha256"] == plain.sha256 == plain.bundle_sha256
    # ... but the copy kept in the project is sealed under the subject's data key: an operator
    # reading privacy/exports (or a backup of it) finds no zip; `visage data decrypt` opens it.
    assert plain.path.name.endswith(".zip.sealed") and not zipfile.is_zipfile(plain.path)
    assert plain.path.stat().st_mode & 0o777 == 0o600
    zipped = open_sealed_file(proj.paths, plain.path)
    assert hashlib.sha256(zipped).hexdigest() == plain.bundle_sha256
    assert plain.path in bundles_of(proj.paths, pid)  # found by its header, for the erasure
    assert not [f for f in doctor(proj.paths).findings if f.kind == "plaintext"]
    assert plain.data == zipped  # the HTTP API hands the zip over from memory
    proj.core.data_keys.destroy(pid)
    with pytest.raises(NoDataKeyError):
        open_sealed_file(proj.paths, plain.path)


def test_rectification_records_hashes_replaces_images_and_reenrols(proj):
    pid = proj.pids[1]
    gallery = proj.gallery()
    image_id = sorted(proj.images[pid])[0]
    old_bytes = proj.images[pid][image_id]
    new_photo = face_tile(proj.world.people[pid], np.random.default_rng(7), noise=3.0)
    new_bytes = png(new_photo)
    before_tpl = gallery.template(pid)[0]
    sealed_before = sha256_file(RawStore(proj.paths).image_path(pid, image_id))
    result = rectify(
        proj.paths,
        pid,
        attributes={"age": 41, "gender": "male"},
        images={image_id: new_bytes},
        core=proj.core,
        gallery=gallery,
        engine=proj.engine,
    )
    row = read_subjects(proj.paths.raw).set_index("pid").loc[pid]
    assert (int(row["age"]), row["gender"]) == (41, "male")
    stored = RawStore(proj.paths, core=proj.core).read_image(pid, image_id)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), new_photo)
    images = read_images(proj.paths.raw).set_index("image_id")
    assert images.loc[image_id, "sha256"] == hashlib.sha256(stored).hexdigest()
    (event,) = [e for e in proj.core.ledger.entries() if e.type == "rectification"]
    assert event.payload["fields"] == ["age", "gender"]
    # The attributes by a MAC under the subject's data key: a DPO checks it while they are on
    # record; once erased, nothing of theirs can be matched against it.
    data_key = proj.core.data_keys.key(pid)
    assert event.payload["attributes_mac_after"] == attributes_mac(data_key, row.to_dict())
    assert event.payload["attributes_mac_before"] != event.payload["attributes_mac_after"]
    # The images by their sealed files' hashes: the one it replaced, and the one it wrote.
    (change,) = event.payload["files"]
    assert change["sealed_sha256_before"] == sealed_before
    assert change["sealed_sha256_after"] == sha256_file(
        RawStore(proj.paths).image_path(pid, image_id)
    )
    payload = json.dumps(event.payload)
    for png_bytes in (old_bytes, stored):
        assert hashlib.sha256(png_bytes).hexdigest() not in payload
    # hashes, not values: no field of the payload holds the corrected age or gender
    flat = [v for v in json.dumps(event.payload).replace('"', " ").replace(",", " ").split()]
    assert "41" not in flat and "male" not in flat
    # Re-enrolled from the corrected images: a new template that still identifies them.
    assert result.gallery == "reenrolled"
    assert not np.array_equal(gallery.template(pid)[0], before_tpl)
    match = gallery.identify(proj.engine.embed(new_photo[None])[0])
    assert match and match[0].pid == pid
    assert RequestBook(proj.core).get(result.request_id).status == "completed"


def test_rectification_without_an_embedder_removes_the_outdated_template(project):
    proj = make_project(project, n_subjects=3)
    (proj.paths.models / "embedder.onnx").unlink()
    pid = proj.pids[2]
    image_id = sorted(proj.images[pid])[0]
    result = rectify(
        proj.paths, pid, images={image_id: png(face_tile(proj.world.people[pid], proj.world.rng))}
    )
    assert result.gallery == "template_removed_until_reenrolment"
    assert pid not in proj.gallery().stored()


@pytest.mark.pipeline
def test_rectification_makes_derived_data_stale_through_dvc(tiny_project):
    root = tiny_project(dvc=True)
    proj = make_project(root, n_subjects=3, track=True)
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports" / "prepare.json").write_text("{}")
    dvc = str(Path(sys.executable).with_name("dvc"))

    def run(*args):
        return subprocess.run([dvc, *args], cwd=root, capture_output=True, text=True)

    assert run("commit", "-f", "prepare").returncode == 0
    assert "up to date" in run("status", "prepare").stdout
    pid = proj.pids[0]
    result = rectify(proj.paths, pid, attributes={"age": 55}, core=proj.core, engine=proj.engine)
    assert result.raw_md5_before != result.raw_md5_after
    status = run("status", "prepare").stdout
    assert "data/raw" in status and "modified" in status


def _prepared_pids(proj, monkeypatch) -> set[str]:
    monkeypatch.setattr(prepare, "FaceDetector", PrepareTileDetector)
    prepare.run(proj.paths)
    return set(pd.read_parquet(proj.paths.processed / "manifest.parquet")["pid"])


def _identified(proj, gallery, pid) -> bool:
    emb = proj.engine.embed(proj.world.photo(pid))[0]
    return any(m.pid == pid for m in gallery.identify(emb, top_k=3))


def test_restriction_request_excludes_from_prepare_and_identify_and_lift_restores(
    proj, monkeypatch
):
    pid = proj.pids[0]
    gallery = proj.gallery()
    assert pid in _prepared_pids(proj, monkeypatch) and _identified(proj, gallery, pid)
    book = RequestBook(proj.core)
    st = book.receive(pid, "restriction", details={"action": "set"})
    book.verify(st.request_id)
    restrict(proj.paths, pid, request_id=st.request_id, core=proj.core)
    assert book.get(st.request_id).status == "completed"
    assert pid not in _prepared_pids(proj, monkeypatch)
    assert not _identified(proj, gallery, pid)
    # Data kept: raw images and the template are still there.
    assert (proj.paths.raw / pid).is_dir() and pid in gallery.stored()
    lifted = restrict(proj.paths, pid, lift=True, core=proj.core)
    assert lifted.status == "completed" and lifted.details == {"action": "lift"}
    assert pid in _prepared_pids(proj, monkeypatch) and _identified(proj, gallery, pid)


def test_objection_to_identification_keeps_training_but_stops_matching(proj, monkeypatch):
    pid = proj.pids[3]
    gallery = proj.gallery()
    st = object_to(proj.paths, pid, purposes=["identification"], core=proj.core)
    assert st.status == "completed" and st.details == {"purposes": ["identification"]}
    assert not _identified(proj, gallery, pid)
    assert pid in _prepared_pids(proj, monkeypatch)
    # The same objection again changes nothing: refused before any request is recorded.
    ledger = proj.paths.ledger.read_bytes()
    with pytest.raises(NothingChangedError, match="already objects to identification"):
        object_to(proj.paths, pid, purposes=["identification"], core=proj.core)
    assert proj.paths.ledger.read_bytes() == ledger
    object_to(proj.paths, pid, core=proj.core)  # all purposes
    assert pid not in _prepared_pids(proj, monkeypatch)
    proj.core.withdraw_objection(pid)
    assert _identified(proj, gallery, pid)


# -- HTTP ----------------------------------------------------------------------------------


def test_http_requests_lifecycle_and_export_for_the_dpo_only(proj, tmp_path):
    call = http_caller(proj)
    pid = proj.pids[1]
    r = call("POST", f"/v1/subjects/{pid}/requests", "dpo", json={"right": "portability"})
    assert r.status_code == 200, r.text
    rid = r.json()["request_id"]
    # One calendar month (Art. 12(3)): 28 to 31 days depending on the month.
    assert 28 <= r.json()["days_left"] <= 31 and r.json()["status"] == "received"
    assert call("GET", "/v1/requests", "operator").status_code == 403
    listed = call("GET", "/v1/requests", "dpo").json()["requests"]
    assert [x["request_id"] for x in listed] == [rid]
    r = call("GET", f"/v1/subjects/{pid}/export", "dpo", params={"request_id": rid})
    assert r.status_code == 422 and "recipient" in r.json()["error"]["message"]
    query = {"request_id": rid, "recipient": PUBLIC}
    r = call("GET", f"/v1/subjects/{pid}/export", "dpo", params=query)
    assert r.status_code == 409 and "verify" in r.json()["error"]["message"]
    assert call("POST", f"/v1/requests/{rid}/verify", "dpo").json()["status"] == "verified"
    r = call("POST", f"/v1/requests/{rid}/extend", "dpo", json={"days": 61, "reason_code": "x"})
    assert r.status_code == 409
    for role in ("operator", "auditor"):
        assert call("GET", f"/v1/subjects/{pid}/export", role).status_code == 403
    r = call("GET", f"/v1/subjects/{pid}/export", "dpo", params=query)
    assert r.status_code == 200, r.text
    bundle = r.json()["bundle"]
    assert bundle["zip_base64"] is None and bundle["delivery"] == "age-x25519"
    data = base64.b64decode(bundle["age_base64"])
    assert hashlib.sha256(data).hexdigest() == bundle["sha256"]
    assert bundle["filename"] == f"{rid}.zip.age"
    (tmp_path / "b.zip.age").write_bytes(data)
    doc = validate_bundle(tmp_path / "b.zip.age", identity=SECRET)
    assert doc["manifest"]["request_id"] == rid and len(doc["templates"]["templates"]) == 1
    assert not (proj.paths.root / "privacy" / "exports").exists()  # not kept on the server
    assert call("GET", "/v1/requests", "dpo").json()["requests"] == []
    closed = call("GET", "/v1/requests", "dpo", params={"all": True}).json()["requests"]
    assert closed[0]["status"] == "completed" and closed[0]["receipt_sha256"]
    r = call("POST", "/v1/requests/r20260101-00000000/deny", "dpo", json={"reason_code": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_request"


def test_cli_request_run_export_and_rectify(proj, tmp_path):
    runner = CliRunner()
    pid = proj.pids[4]

    def invoke(*args):
        r = runner.invoke(app, ["privacy", *args])
        assert r.exit_code == 0, r.output
        return r.output

    rid = json.loads(invoke("request", "new", pid, "--right", "restriction", "--json"))[
        "request_id"
    ]
    invoke("request", "verify", rid)
    invoke("request", "run", rid)
    assert proj.core.subject(pid).restricted
    assert RequestBook(proj.core).get(rid).status == "completed"
    out = tmp_path / "copy.zip.age"
    done = json.loads(
        invoke("export", pid, "--portability", "--out", str(out), "-r", PUBLIC, "--json")
    )
    assert done["path"] == str(out) and done["delivery"] == "age-x25519"
    assert validate_bundle(out, identity=SECRET)["manifest"]["pid"] == pid
    refused = runner.invoke(app, ["privacy", "export", pid])
    assert refused.exit_code == 2 and "--plaintext" in refused.output
    # A zip in clear (the subject's faces and template) inside the project would be beyond the
    # erasure's reach: refused before any request or release is recorded.
    seq = len(list(proj.core.ledger.entries()))
    inside = proj.paths.root / "reports" / "handover.zip"
    refused = runner.invoke(app, ["privacy", "export", pid, "--plaintext", "--out", str(inside)])
    assert refused.exit_code == 2 and "inside the project" in refused.output
    assert not inside.exists() and len(list(proj.core.ledger.entries())) == seq
    photo = tmp_path / "new.png"
    photo.write_bytes(png(face_tile(proj.world.people[pid], proj.world.rng)))
    (proj.paths.models / "embedder.onnx").unlink()  # no MTCNN start-up in this test
    image_id = sorted(proj.images[pid])[1]
    text = invoke("rectify", pid, "--age", "33", "--image", f"{image_id}={photo}")
    assert "rectified" in text
    assert int(read_subjects(proj.paths.raw).set_index("pid").loc[pid, "age"]) == 33
    bad = runner.invoke(app, ["privacy", "rectify", pid, "--image", "nonsense"])
    assert bad.exit_code == 2 and "IMAGE_ID=FILE" in bad.output


# -- a failed action leaves its request as a DPO can act on it --------------------------------


def _flat(output: str) -> str:
    return " ".join(output.split())  # the console wraps long lines


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _broken_audit_log(proj) -> bytes:
    """An audit log anchored in the ledger, then rewritten: returns its true bytes."""
    from visage_ml.app.http.audit import AuditLog
    from visage_ml.privacy import auditlog

    path = proj.paths.privacy / auditlog.AUDIT_FILE
    log = AuditLog(path, fsync_interval=0)
    for i in range(3):
        log.write({"request_id": f"h{i}", "action": "identify", "pids": [proj.pids[0]]})
    log.close()
    report = auditlog.verify(path)
    proj.core.ledger.append("audit.anchored", None, {"lines": report.lines, "head": report.head})
    true = path.read_bytes()
    path.write_bytes(true.replace(b"h1", b"hX"))  # an identification rewritten
    return true


def test_a_rectification_with_bad_input_starts_no_request_and_changes_nothing(proj):
    pid, other = proj.pids[1], proj.pids[2]
    own_id = sorted(proj.images[pid])[0]
    photo = png(face_tile(proj.world.people[pid], np.random.default_rng(3)))
    gallery = proj.gallery()
    raw, tpl = _tree(proj.paths.raw), gallery.template(pid)[0]
    book = RequestBook(proj.core)
    rid = book.verify(book.receive(pid, "rectification").request_id).request_id
    seq = len(list(proj.core.ledger.entries()))
    bad_inputs = (
        ({"images": {"nonsense": photo}}, "is not 'i' \\+ 12"),
        ({"images": {"i000000000000": photo}}, "not one of"),
        ({"images": {sorted(proj.images[other])[0]: photo}}, "not one of"),
        ({"images": {own_id: b"not an image"}}, f"image {own_id}"),
        ({"images": {own_id: png(np.zeros((8, 8, 3), np.uint8))}}, f"image {own_id}"),
        ({"attributes": {"gender": "robot"}}, "gender must be one of"),
        ({"attributes": {"age": -3}}, "age must be a whole number of years from 0 to 120"),
        ({"attributes": {"age": 400}}, "age must be"),
        ({"attributes": {"age": 31.5}}, "age must be"),
        ({"attributes": {"group": "g9"}}, "group must be one of g1, g2, g3, g4"),
        ({"attributes": {"eye_colour": "blue"}}, "only age, gender and group"),
    )
    for kw, message in bad_inputs:
        for request_id in (None, rid):
            with pytest.raises(ValueError, match=message):
                rectify(
                    proj.paths,
                    pid,
                    request_id=request_id,
                    core=proj.core,
                    gallery=gallery,
                    engine=proj.engine,
                    **kw,
                )
    # Refused before anything was recorded or written: no new request, the subject's request
    # still verified (not "in_progress" with nothing to finish it), data/raw and the gallery
    # as they were.
    assert len(list(proj.core.ledger.entries())) == seq
    assert RequestBook(proj.core).get(rid).status == "verified"
    assert _tree(proj.paths.raw) == raw
    assert np.array_equal(proj.gallery().template(pid)[0], tpl)


def test_a_rectification_that_fails_once_started_is_recorded_and_can_be_run_again(
    proj, monkeypatch
):
    from visage_ml.serving.gallery import GalleryUnavailableError

    pid = proj.pids[1]
    image_id = sorted(proj.images[pid])[0]
    photo = png(face_tile(proj.world.people[pid], np.random.default_rng(9), noise=3.0))
    gallery = proj.gallery()
    raw, tpl = _tree(proj.paths.raw), gallery.template(pid)[0]
    book = RequestBook(proj.core)
    rid = book.verify(book.receive(pid, "rectification").request_id).request_id

    def unavailable(*a, **kw):
        raise GalleryUnavailableError("the gallery's database dropped the connection")

    def again():
        return rectify(
            proj.paths,
            pid,
            attributes={"age": 52},
            images={image_id: photo},
            request_id=rid,
            core=proj.core,
            gallery=gallery,
            engine=proj.engine,
        )

    with monkeypatch.context() as m:
        m.setattr(gallery, "enroll", unavailable)
        with pytest.raises(GalleryUnavailableError) as failed:
            again()
    assert f"--request {rid}" in "\n".join(failed.value.__notes__)
    # Nothing half-written: data/raw and the template as they were ...
    assert _tree(proj.paths.raw) == raw
    assert np.array_equal(proj.gallery().template(pid)[0], tpl)
    assert not [e for e in proj.core.ledger.entries() if e.type == "rectification"]
    # ... and the request open, with the failure recorded for the DPO to see and act on.
    st = RequestBook(proj.core).get(rid)
    assert st.status == "in_progress"
    assert st.failure["code"] == "gallery_unavailable_error"
    assert st.failure["step"] == "rectification"
    shown = CliRunner().invoke(app, ["privacy", "request", "show", rid])
    assert shown.exit_code == 0 and "failed" in shown.output
    assert f"--request {rid}" in _flat(shown.output), shown.output
    listed = CliRunner().invoke(app, ["privacy", "requests"])
    assert "failed: gallery_unavailable_error" in _flat(listed.output), listed.output
    result = again()
    assert result.gallery == "reenrolled"
    assert RequestBook(proj.core).get(rid).status == "completed"
    assert int(read_subjects(proj.paths.raw).set_index("pid").loc[pid, "age"]) == 52


def test_an_export_refused_by_the_audit_log_is_recorded_on_its_request(proj):
    from visage_ml.privacy.auditlog import AuditLogError

    pid = proj.pids[2]
    true = _broken_audit_log(proj)
    book = RequestBook(proj.core)
    rid = book.verify(book.receive(pid, "access").request_id).request_id
    with pytest.raises(AuditLogError, match=r"restore privacy/audit\.jsonl") as failed:
        export_subject(proj.paths, pid, request_id=rid, core=proj.core, delivery=FOR_REQUESTER)
    assert f"--request {rid}" in "\n".join(failed.value.__notes__)
    st = RequestBook(proj.core).get(rid)
    assert st.status == "in_progress" and st.failure["code"] == "audit_log_unverified"
    assert not (proj.paths.root / "privacy" / "exports").exists()
    shown = CliRunner().invoke(app, ["privacy", "request", "show", rid])
    assert "restore privacy/audit.jsonl" in _flat(shown.output), shown.output
    # Started by the DPO (no --request): the one request recorded says what failed, and the
    # error names it, so the next attempt answers it instead of opening another.
    refused = CliRunner().invoke(app, ["privacy", "export", pid, "-r", PUBLIC])
    assert refused.exit_code == 2 and "restore privacy/audit.jsonl" in _flat(refused.output)
    (opened,) = [s for s in RequestBook(proj.core).open(pid=pid) if s.request_id != rid]
    assert opened.failure["code"] == "audit_log_unverified"
    assert f"--request {opened.request_id}" in _flat(refused.output)
    (proj.paths.privacy / "audit.jsonl").write_bytes(true)  # restored from a backup
    export_subject(proj.paths, pid, request_id=rid, core=proj.core, delivery=FOR_REQUESTER)
    assert RequestBook(proj.core).get(rid).status == "completed"


def test_http_export_refused_by_the_audit_log_says_to_restore_it(proj):
    call = http_caller(proj)
    pid = proj.pids[3]
    _broken_audit_log(proj)
    rid = call("POST", f"/v1/subjects/{pid}/requests", "dpo", json={"right": "access"}).json()[
        "request_id"
    ]
    call("POST", f"/v1/requests/{rid}/verify", "dpo")
    query = {"request_id": rid, "recipient": PUBLIC}
    r = call("GET", f"/v1/subjects/{pid}/export", "dpo", params=query)
    error = r.json()["error"]
    assert r.status_code == 503 and error["code"] == "audit_log_unverified", r.text
    assert "restore privacy/audit.jsonl" in error["message"]
    assert f"request_id={rid}" in error["message"]
    (listed,) = call("GET", "/v1/requests", "dpo").json()["requests"]
    assert listed["status"] == "in_progress"
    assert listed["failure"]["code"] == "audit_log_unverified"
    # What the CLI says, the DPO reads here too: the step, the code and what to do next.
    hint = listed["failure_hint"]
    assert "(export: audit_log_unverified)" in hint, hint
    assert "restore privacy/audit.jsonl" in hint and f"request_id={rid}" in hint
    for role in ("operator", "auditor"):
        assert call("GET", "/v1/requests", role).status_code == 403


def _http_access_export(call, pid: str):
    """An access request received and verified for ``pid`` over HTTP, then exported: its id
    and the export's answer."""
    rid = call("POST", f"/v1/subjects/{pid}/requests", "dpo", json={"right": "access"}).json()[
        "request_id"
    ]
    call("POST", f"/v1/requests/{rid}/verify", "dpo")
    return rid, call(
        "GET", f"/v1/subjects/{pid}/export", "dpo", params={"request_id": rid, **TO_HIM}
    )


def _export_stopped(call, r, proj, code: str, *, remedy: str, file: str) -> None:
    """The export answered 503 ``code``, documented on its route, with ``remedy`` and a retry
    in its message (neither the project's folder nor ``file`` named), its request in progress
    with that failure."""
    assert (r.status_code, r.json()["error"]["code"]) == (503, code), r.text
    message = r.json()["error"]["message"]
    assert remedy in message and "retry" in message, message
    assert str(proj.paths.root) not in message and file not in message, message
    (listed,) = call("GET", "/v1/requests", "dpo").json()["requests"]
    assert listed["status"] == "in_progress"
    assert listed["failure"]["code"] == code
    documented = call.app.openapi()["paths"]["/v1/subjects/{pid}/export"]["get"]["responses"]
    assert f"`{code}`" in documented["503"]["description"]


def test_http_an_export_that_finds_a_damaged_photograph_is_not_answered_as_a_refusal(proj):
    # The request routes answered every ValueError 409 not_allowed: a sealed photograph that
    # fails authentication (altered, truncated) told the DPO that the request's state did not
    # allow the export, which a client takes for a refusal not worth retrying; then a plain 500
    # internal_error, what to do only in the server's log. It is the server's stored data that
    # needs repair: 503 sealed_file_error saying so, recorded on the request, which stays in
    # progress and is exported once the photograph is restored.
    call = http_caller(proj)
    pid = proj.pids[1]
    (photo, *_) = sorted((proj.paths.raw / pid).iterdir())
    sound = photo.read_bytes()
    data = bytearray(sound)
    data[-5] ^= 0xFF
    photo.write_bytes(bytes(data))
    rid, r = _http_access_export(call, pid)

    # Not where the server keeps it: the operator's log names the file.
    _export_stopped(call, r, proj, "sealed_file_error", remedy="dvc checkout", file=photo.name)

    photo.write_bytes(sound)  # restored (`dvc checkout`): the same request is exported
    r = call("GET", f"/v1/subjects/{pid}/export", "dpo", params={"request_id": rid, **TO_HIM})
    assert r.status_code == 200, r.text
    assert call("GET", "/v1/requests", "dpo").json()["requests"] == []


def test_http_an_export_that_finds_a_damaged_gallery_template_says_to_repair_the_gallery(proj):
    # The subject's template in the local gallery, altered on disk, made Gallery.template raise
    # a bare GalleryError: 500 internal_error, what to do only in the server's log.
    call = http_caller(proj)
    pid = proj.pids[1]
    template = proj.gallery().template_path(pid)
    data = bytearray(template.read_bytes())
    data[-5] ^= 0xFF
    template.write_bytes(bytes(data))
    _, r = _http_access_export(call, pid)

    _export_stopped(
        call, r, proj, "template_file_error", remedy="visage gallery verify", file=template.name
    )


def _unreadable(photo: Path, how: str, monkeypatch) -> Callable[[], None]:
    """Leave ``photo`` there but unreadable: a folder in its place, or a read the system refuses
    (the tests run as root, whom a file's mode does not stop: the read is made to fail).
    Returns what makes it readable again."""
    sound = photo.read_bytes()
    if how == "folder":
        photo.unlink()
        photo.mkdir()
        return lambda: (photo.rmdir(), photo.write_bytes(sound))
    read = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self == photo:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return read(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    return lambda: monkeypatch.setattr(Path, "read_bytes", read)


UNREADABLE = pytest.mark.parametrize("how", ["folder", "denied"])


@UNREADABLE
def test_http_an_export_that_cannot_read_a_photograph_says_to_check_the_servers_storage(
    proj, monkeypatch, how
):
    # A stored photograph there but unreadable (its permissions, a folder in its place, the
    # storage failing): a refused read was answered 500 internal_error, and a folder was
    # counted as missing, the request closed without the photograph. The server's storage needs
    # repair: 503 image_unreadable saying so, the request in progress until it is retried.
    call = http_caller(proj)
    pid = proj.pids[1]
    (photo, *_) = sorted((proj.paths.raw / pid).iterdir())
    readable_again = _unreadable(photo, how, monkeypatch)
    rid, r = _http_access_export(call, pid)

    _export_stopped(call, r, proj, "image_unreadable", remedy="permissions", file=photo.name)

    readable_again()  # the same request is exported
    r = call("GET", f"/v1/subjects/{pid}/export", "dpo", params={"request_id": rid, **TO_HIM})
    assert r.status_code == 200, r.text
    assert (r.json()["images"], r.json()["images_missing"]) == (len(proj.images[pid]), 0)


@UNREADABLE
def test_cli_an_export_that_cannot_read_a_photograph_says_what_to_check(proj, monkeypatch, how):
    # The CLI printed the system's error with the photograph's full path and nothing to do (a
    # refused read), or completed the request counting the photograph as missing (a folder).
    pid = proj.pids[1]
    (photo, *_) = sorted((proj.paths.raw / pid).iterdir())
    _unreadable(photo, how, monkeypatch)

    r = CliRunner().invoke(app, ["privacy", "export", pid, "-r", PUBLIC])

    said = _flat(r.output)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"{pid}/{photo.name} in data/raw cannot be read" in said, said
    assert "permissions" in said and "dvc checkout" in said, said
    (st,) = RequestBook(proj.core).open(pid=pid)
    assert st.status == "in_progress" and st.failure["code"] == "image_unreadable"
    assert f"--request {st.request_id}" in said


def _raw_not_checked_out(paths, how: str) -> Callable[[], None]:
    """``data/raw``'s tables not in the checkout, as ``how`` says; returns what restores them
    (`dvc checkout data/raw`)."""
    raw = paths.raw
    if how == "no_images_table":  # a checkout cut short: subjects.parquet there, not images
        table = raw / "images.parquet"
        kept = table.read_bytes()
        table.unlink()
        return lambda: table.write_bytes(kept)
    away = raw.parent / "raw.away"
    dvcfile = raw.parent / "raw.dvc"
    if how == "a_photograph":  # both tables there, each subject's first photograph not
        away.mkdir()
        photos = [sorted(folder.iterdir())[0] for folder in sorted(raw.glob("p*/"))]
        for photo in photos:
            photo.rename(away / photo.name)
        dvcfile.write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: raw\n")

        def restore_photos() -> None:
            for photo in photos:
                (away / photo.name).rename(photo)

        return restore_photos
    if how == "tracked":  # DVC tracks data/raw, its tables never checked out here
        away.mkdir()
        for name in ("subjects.parquet", "images.parquet"):
            (raw / name).rename(away / name)
        dvcfile.write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: raw\n")

        def restore() -> None:
            for name in ("subjects.parquet", "images.parquet"):
                (away / name).rename(raw / name)

        return restore
    raw.rename(away)  # no data/raw at all, untracked: data/processed holds their crops
    return lambda: away.rename(raw)


@pytest.mark.parametrize("how", ["no_images_table", "tracked", "no_raw", "a_photograph"])
def test_http_an_export_whose_raw_data_is_not_checked_out_says_to_check_it_out(proj, how):
    # data/raw's tables absent (`dvc checkout` not run, or cut short): read_images gave an empty
    # table and the export answered 200, its bundle without a photograph of the subject, and
    # closed the request, as if they had none. Refused now: 503 raw_data_missing, saying what
    # to run, the request in progress until the export is retried.
    call = http_caller(proj)
    pid = proj.pids[1]
    restore = _raw_not_checked_out(proj.paths, how)
    rid, r = _http_access_export(call, pid)

    _export_stopped(
        call, r, proj, "raw_data_missing", remedy="dvc checkout data/raw", file=str(proj.paths.raw)
    )
    # Not a checkout straight away: one with a file the DVC cache lacks empties data/raw.
    assert "after `dvc fetch data/raw` where the DVC cache lacks" in r.json()["error"]["message"]

    restore()  # `dvc checkout data/raw`: the same request is exported, every photograph in it
    r = call("GET", f"/v1/subjects/{pid}/export", "dpo", params={"request_id": rid, **TO_HIM})
    assert r.status_code == 200, r.text
    assert (r.json()["images"], r.json()["images_missing"]) == (len(proj.images[pid]), 0)


def test_a_subject_without_photographs_is_exported_and_one_imported_with_them_is_refused(
    proj, tmp_path
):
    # A subject added by hand (`visage privacy subject add`) has no row in data/raw: their
    # export has no photograph, with data/raw there or not. One the registry says was imported
    # has photographs: without data/raw, `visage privacy export` printed that the bundle was
    # written, 0 images, and completed the request.
    manual = proj.core.add_subject(external_ref="HR-1", source="manual")
    imported = proj.core.add_subject(source="import:utkface")
    for n in range(2):
        out = tmp_path / f"manual-{n}.zip"
        result = export_subject(proj.paths, manual, out=out, core=proj.core, delivery=PLAIN)
        assert result.images == 0 and validate_bundle(out)["subject"]["images"] == []
        if n == 0:
            _raw_not_checked_out(proj.paths, "no_raw")

    r = CliRunner().invoke(app, ["privacy", "export", imported, "-r", PUBLIC])

    said = _flat(r.output)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "came from import:utkface" in said and "dvc checkout data/raw" in said, said
    (st,) = RequestBook(proj.core).open(pid=imported)
    assert st.status == "in_progress" and st.failure["code"] == "raw_data_missing"


def _dvc_added(root: Path) -> None:
    """The project at ``root`` made a git + DVC repository tracking data/raw (`dvc add`)."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "add", "-q", "data/raw"]):
        subprocess.run(cmd, cwd=root, check=True, env=env, capture_output=True)


@pytest.mark.pipeline
@pytest.mark.parametrize("cached", [False, True], ids=["a_photograph_not_cached", "all_cached"])
def test_an_export_without_images_table_whose_photograph_the_cache_lacks_says_fetch_first(
    proj, tmp_path, cached
):
    # data/raw's images.parquet not checked out, and a photograph of another subject gone from
    # the workspace and the DVC cache: the refusal said to run `dvc checkout data/raw`, which
    # then fails and takes the whole of data/raw out of the workspace (DVC 3.67), every
    # photograph still there. It says to fetch first now, counting what the cache lacks; where
    # the cache holds it all, the checkout it advises brings the table back.
    pid, other = proj.pids[1], proj.pids[2]
    _dvc_added(proj.paths.root)
    (proj.paths.raw / "images.parquet").unlink()
    if not cached:
        photo = sorted((proj.paths.raw / other).iterdir())[0]
        md5 = hashlib.md5(photo.read_bytes(), usedforsecurity=False).hexdigest()
        photo.unlink()
        cached_object(proj.paths.root, md5).unlink()
    raw = _tree(proj.paths.raw)

    with pytest.raises(RawDataMissingError) as refused:
        export_subject(proj.paths, pid, out=tmp_path / "out.zip", core=proj.core, delivery=PLAIN)

    said = _flat(str(refused.value))
    followed = tmp_path / "followed"
    assert follow_first_advice(said, proj.paths.root, followed).returncode == 0 or not cached
    after = _tree(followed / "data" / "raw") if (followed / "data" / "raw").is_dir() else {}
    assert after.pop("images.parquet", None) is not None or not cached, said
    assert after == raw, said  # nothing taken out of the workspace
    assert ("run `dvc fetch data/raw` first" in said) != cached, said
    if not cached:
        assert "1 file(s) of data/raw" in said and other not in said, said
    assert _tree(proj.paths.raw) == raw and not (tmp_path / "out.zip").exists()


@pytest.mark.parametrize("how", ["no_images_table", "tracked", "no_raw", "a_photograph"])
def test_a_rectification_whose_raw_data_is_not_checked_out_says_to_check_it_out(proj, how):
    # data/raw's tables absent (`dvc checkout` not run, or cut short): the rectification read
    # images.parquet as empty and refused the subject's own photograph as "not one of subject
    # ...'s images in data/raw", blaming the request; a correction of attributes alone, with
    # subjects.parquet there, wrote data/raw's images.parquet again without a row: every
    # subject's photographs unlisted. Refused now, saying to run `dvc checkout data/raw`,
    # nothing changed, the request kept with its failure recorded.
    pid = proj.pids[1]
    image_id = sorted(proj.images[pid])[0]
    photo = png(face_tile(proj.world.people[pid], np.random.default_rng(9), noise=3.0))
    gallery = proj.gallery()
    book = RequestBook(proj.core)
    rid = book.verify(book.receive(pid, "rectification").request_id).request_id
    restore = _raw_not_checked_out(proj.paths, how)
    raw = _tree(proj.paths.raw)

    for kw in ({"images": {image_id: photo}}, {"attributes": {"age": 52}}):
        with pytest.raises(RawDataMissingError, match="run `dvc checkout data/raw`") as refused:
            rectify(
                proj.paths,
                pid,
                request_id=rid,
                core=proj.core,
                gallery=gallery,
                engine=proj.engine,
                **kw,
            )
        assert f"--request {rid}" in "\n".join(refused.value.__notes__)

    assert _tree(proj.paths.raw) == raw
    st = RequestBook(proj.core).get(rid)
    assert st.status == "verified", st.status
    assert (st.failure["step"], st.failure["code"]) == ("rectification", "raw_data_missing")
    # The DPO's own (no --request): one line, nothing recorded.
    ledger = proj.paths.ledger.read_bytes()
    r = CliRunner().invoke(app, ["privacy", "rectify", pid, "--age", "52"])
    said = _flat(r.output)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "dvc checkout data/raw" in said, said
    assert proj.paths.ledger.read_bytes() == ledger

    restore()  # `dvc checkout data/raw`: the same request is answered
    rectify(
        proj.paths,
        pid,
        attributes={"age": 52},
        images={image_id: photo},
        request_id=rid,
        core=proj.core,
        gallery=gallery,
        engine=proj.engine,
    )
    assert RequestBook(proj.core).get(rid).status == "completed"
    assert int(read_subjects(proj.paths.raw).set_index("pid").loc[pid, "age"]) == 52
    assert len(read_images(proj.paths.raw)) == sum(len(v) for v in proj.images.values())


@pytest.mark.parametrize("how", ["no_images_table", "tracked", "no_raw", "a_photograph"])
def test_http_a_lift_whose_raw_data_is_not_checked_out_says_to_check_it_out(proj, how):
    # The template a rectification removed during the restriction is made again at the lift
    # from the subject's rows in images.parquet. Read as empty, the lift answered 200, in force,
    # its note "no single face was found in the rectified images": the subject unidentified
    # until enrolled again, for want of a `dvc checkout`. Refused now before anything is
    # recorded, the restriction in force: 503 raw_data_missing; a verified lift request keeps
    # its failure, and is lifted, the template made again, once the tables are back.
    call = http_caller(proj)
    pid = proj.pids[2]
    assert call("POST", f"/v1/subjects/{pid}/restrict", "dpo").status_code == 200
    rectified = sorted(proj.images[pid])[0]
    new_photo = png(face_tile(proj.world.people[pid], np.random.default_rng(13), noise=3.0))
    rectify(proj.paths, pid, images={rectified: new_photo}, core=proj.core)
    restore = _raw_not_checked_out(proj.paths, how)
    ledger = proj.paths.ledger.read_bytes()

    r = call("POST", f"/v1/subjects/{pid}/lift", "dpo")

    assert (r.status_code, r.json()["error"]["code"]) == (503, "raw_data_missing"), r.text
    message = r.json()["error"]["message"]
    assert "dvc checkout data/raw" in message and "retry" in message, message
    assert str(proj.paths.root) not in message
    assert proj.paths.ledger.read_bytes() == ledger  # not lifted, the subject not told
    assert PrivacyCore(proj.paths).subject(pid).restricted
    documented = call.app.openapi()["paths"]["/v1/subjects/{pid}/lift"]["post"]["responses"]
    assert "`raw_data_missing`" in documented["503"]["description"]
    r = CliRunner().invoke(app, ["privacy", "lift", pid])
    assert r.exit_code == 2 and "dvc checkout data/raw" in _flat(r.output), r.output
    book = RequestBook(proj.core)
    rid = book.verify(
        book.receive(pid, "restriction", details={"action": "lift"}).request_id
    ).request_id
    with pytest.raises(RawDataMissingError, match="run `dvc checkout data/raw`"):
        run_request(proj.paths, rid, core=proj.core)
    st = RequestBook(proj.core).get(rid)
    assert st.status == "verified" and st.failure["code"] == "raw_data_missing", st
    assert PrivacyCore(proj.paths).subject(pid).restricted

    restore()  # `dvc checkout data/raw`
    gallery = proj.gallery()
    done = restrict(
        proj.paths,
        pid,
        request_id=rid,
        lift=True,
        core=proj.core,
        gallery=gallery,
        engine=proj.engine,
    )
    assert done.status == "completed" and done.outcome["gallery"] == "reenrolled", done.outcome
    assert pid in gallery.stored()
    assert not PrivacyCore(proj.paths).subject(pid).restricted


def test_http_the_request_books_refusals_are_answered_409_not_allowed(proj):
    # What the request book refuses for what a request says: nothing recorded, and the message
    # says why (kept 409 when other errors were no longer taken for refusals; an erased
    # subject's is subject_erased, below).
    call = http_caller(proj)
    pid = proj.pids[1]
    rid = call("POST", f"/v1/subjects/{pid}/requests", "dpo", json={"right": "access"}).json()[
        "request_id"
    ]
    refused = (
        (
            f"/v1/subjects/{pid}/requests",
            {"right": "access", "received_at": "2999-01-01"},
            "future",
        ),
        (f"/v1/requests/{rid}/extend", {"days": 200, "reason_code": "x"}, "at most"),
        (f"/v1/requests/{rid}/extend", {"days": 3, "months": 1, "reason_code": "x"}, "one of"),
        (f"/v1/subjects/{pid}/erasure", {"received_at": "yesterday"}, "ISO 8601"),
    )
    ledger = proj.paths.ledger.read_bytes()
    for path, body, said in refused:
        r = call("POST", path, "dpo", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "not_allowed"), (path, r.text)
        assert said in r.json()["error"]["message"], r.text
    assert proj.paths.ledger.read_bytes() == ledger


def test_http_a_request_for_an_erased_subject_says_they_were_erased_and_where_the_certificate_is(
    proj,
):
    # The request book's refusal of an erased subject was answered 409 not_allowed, the code of
    # a receipt time or an extension refused, though the API documents subject_erased for it
    # (every other route of a subject answers it). Only to a DPO: an operator is not told.
    call = http_caller(proj)
    erased = proj.pids[2]
    rid = Erasure(proj.paths, core=proj.core).erase(erased).request_id
    ledger = proj.paths.ledger.read_bytes()

    r = call("POST", f"/v1/subjects/{erased}/requests", "dpo", json={"right": "access"})

    assert (r.status_code, r.json()["error"]["code"]) == (409, "subject_erased"), r.text
    message = r.json()["error"]["message"]
    assert f"subject {erased} was erased" in message, message
    assert f"privacy/certificates/{rid}.json" in message, message
    assert f"GET /v1/certificates/{rid}" in message, message
    assert proj.paths.ledger.read_bytes() == ledger  # nothing recorded
    assert call("GET", f"/v1/certificates/{rid}", "auditor").status_code == 200
    route = call.app.openapi()["paths"]["/v1/subjects/{pid}/requests"]["post"]["responses"]
    assert "`subject_erased`" in route["409"]["description"]
    # The operator's routes answer as for any subject they may not process: no word of erasure.
    assert call("POST", f"/v1/subjects/{erased}/requests", "operator").status_code == 403
    photo = base64.b64encode(next(iter(proj.images[erased].values()))).decode()
    r = call("POST", "/v1/enroll", "operator", json={"pid": erased, "images": [photo]})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "not_available"), r.text
    assert "erased" not in r.text


def test_http_every_route_refusing_an_erased_subject_says_where_the_certificate_is(proj):
    # Service.live_subject answered 409 subject_erased with "subject ... was erased; nothing
    # about them can be changed any more" on every route of a subject but a new request's: the
    # DPO told neither which erasure nor where its certificate is, though a new request's
    # refusal names both. Each says the same now, and only to a DPO: every route that answers
    # subject_erased is a DPO's, an operator refused it (403) as before.
    call = http_caller(proj)
    erased = proj.pids[2]
    rid = Erasure(proj.paths, core=proj.core).erase(erased).request_id
    ledger = proj.paths.ledger.read_bytes()
    extra = {
        ("get", "/v1/subjects/{pid}/export"): {"params": TO_HIM},
        ("post", "/v1/subjects/{pid}/requests"): {"json": {"right": "access"}},
    }
    routes = sorted(
        (method, path)
        for path, ops in call.app.openapi()["paths"].items()
        for method, op in ops.items()
        if "`subject_erased`" in op["responses"].get("409", {}).get("description", "")
    )
    assert routes == sorted(
        [
            *(
                ("post", f"/v1/subjects/{{pid}}/{action}")
                for action in ("consent/withdraw", "restrict", "lift", "object", "erasure")
            ),
            *extra,
        ]
    )

    for method, path in routes:
        url = path.format(pid=erased)
        r = call(method.upper(), url, "dpo", **extra.get((method, path), {}))

        assert (r.status_code, r.json()["error"]["code"]) == (409, "subject_erased"), (url, r.text)
        message = r.json()["error"]["message"]
        assert f"subject {erased} was erased (erasure request {rid}" in message, message
        assert f"privacy/certificates/{rid}.json" in message, message
        assert "visage privacy verify-certificate" in message, message
        assert f"GET /v1/certificates/{rid}" in message, message
        assert call(method.upper(), url, "operator").status_code == 403, url
    assert proj.paths.ledger.read_bytes() == ledger  # nothing recorded


def test_the_access_export_shows_a_lapsed_consent_in_the_history(proj, tmp_path):
    """A consent older than privacy.retention.consent_months lapses (consent.expired): the
    export said "consent_expired" as the reason, with no such event in the history."""
    pid = proj.pids[0]
    given = [e for e in proj.core.ledger.entries() if e.pid == pid and e.type == "consent.given"][
        -1
    ]
    proj.core.ledger.append(
        "consent.expired",
        pid,
        {"purposes": list(given.payload.get("purposes") or []), "consent_seq": given.seq},
    )
    out = tmp_path / "bundle.zip"
    export_subject(proj.paths, pid, out=out, core=proj.core, delivery=PLAIN)
    history = validate_bundle(out)["subject"]["history"]
    assert "consent.expired" in {h["type"] for h in history}


def test_an_image_whose_file_is_gone_is_named_in_the_export_not_left_out(proj, tmp_path):
    """The raw table lists three photographs; one file is gone (a disk error, a restore cut
    short): the bundle held two and said nothing of the third."""
    pid = proj.pids[0]
    image_id = sorted(proj.images[pid])[0]
    (f,) = [p for p in (proj.paths.raw / pid).iterdir() if p.name.startswith(image_id)]
    f.unlink()
    out = tmp_path / "bundle.zip"
    result = export_subject(proj.paths, pid, out=out, core=proj.core, delivery=PLAIN)
    subject = validate_bundle(out)["subject"]
    assert subject["images_missing"] == [image_id]
    assert result.to_dict()["images_missing"] == 1  # what `visage privacy export` shows
    assert image_id not in {i["image_id"] for i in subject["images"]}


def test_http_an_export_missing_a_photograph_says_so_to_the_dpo(proj):
    # The bundle names a photograph whose file is gone (above), but it is encrypted for the
    # requester: the DPO's answer said 200 and nothing else, and the request was closed without
    # the photograph (a `dvc checkout` not run would have restored it). The answer counts the
    # photographs exported and those missing.
    call = http_caller(proj)
    pid = proj.pids[1]
    (photo, *_) = sorted((proj.paths.raw / pid).iterdir())
    listed = len(proj.images[pid])
    photo.unlink()
    _, r = _http_access_export(call, pid)

    assert r.status_code == 200, r.text
    assert (r.json()["images"], r.json()["images_missing"]) == (listed - 1, 1), r.json()
    documented = call.app.openapi()["components"]["schemas"]["ExportResponse"]["properties"]
    assert "dvc checkout" in documented["images_missing"]["description"]


# -- rectification while processing is restricted (Art. 18(1)(a)) ---------------------------


def _completion_body(proj, rid: str) -> str:
    from visage_ml.privacy.outbox import Outbox

    (msg,) = [
        m for m in Outbox(proj.core).messages() if m.request_id == rid and m.kind == "completion"
    ]
    return " ".join(msg.body.split())


def test_a_restricted_subjects_photo_is_rectified_and_their_template_made_again_on_lift(proj):
    """Art. 18(1)(a): the subject contests the accuracy of their photograph, processing is
    restricted while it is checked, then the photograph is replaced. Re-enrolment refused the
    restricted subject, so the rectification failed and its request stayed in progress."""
    pid = proj.pids[0]  # the subject with a contact address: they are told
    gallery = proj.gallery()
    restrict(proj.paths, pid, core=proj.core, reason_code="accuracy_contested")
    image_id = sorted(proj.images[pid])[0]
    new_photo = face_tile(proj.world.people[pid], np.random.default_rng(11), noise=3.0)
    book = RequestBook(proj.core)
    rid = book.verify(book.receive(pid, "rectification").request_id).request_id
    seq = len(list(proj.core.ledger.entries()))
    result = rectify(
        proj.paths,
        pid,
        images={image_id: png(new_photo)},
        request_id=rid,
        core=proj.core,
        gallery=gallery,
        engine=proj.engine,
    )
    st = book.get(rid)
    assert st.status == "completed"
    assert result.gallery == st.outcome["gallery"] == "template_removed_while_restricted"
    # The rectified photograph is stored, sealed like every photograph.
    store = RawStore(proj.paths, core=proj.core)
    stored = store.read_image(pid, image_id)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), new_photo)
    assert b"\x89PNG" not in store.image_path(pid, image_id).read_bytes()
    # The template made from the old photograph is inaccurate: neither kept nor served; and no
    # new one is computed while processing is restricted.
    assert pid not in gallery.stored() and pid not in proj.gallery().stored()
    after = list(proj.core.ledger.entries())[seq:]
    assert not [e for e in after if e.type == "gallery.enrolled"]
    (removed,) = [e for e in after if e.type == "gallery.removed"]
    assert removed.pid == pid and removed.payload["reason"] == "rectification"
    (event,) = [e for e in after if e.type == "rectification"]
    assert event.payload["gallery"] == "template_removed_while_restricted"
    assert proj.core.subject(pid).restricted
    # The subject is told what happened, in words.
    body = _completion_body(proj, rid)
    assert "restricted" in body and "no new template" in body and "lifted" in body
    # Lifting the restriction makes their template again, from the rectified photograph.
    lifted = restrict(
        proj.paths, pid, lift=True, core=proj.core, gallery=gallery, engine=proj.engine
    )
    assert lifted.status == "completed" and lifted.outcome["gallery"] == "reenrolled"
    assert pid in gallery.stored()
    match = gallery.identify(proj.engine.embed(new_photo[None])[0])
    assert match and match[0].pid == pid
    assert "made again" in _completion_body(proj, lifted.request_id)


def test_a_lift_that_cannot_enrol_the_rectified_subject_says_they_must_be_enrolled_again(
    project,
):
    proj = make_project(project, n_subjects=3)
    (proj.paths.models / "embedder.onnx").unlink()  # nothing to embed with at the lift
    pid = proj.pids[0]
    restrict(proj.paths, pid, core=proj.core)
    image_id = sorted(proj.images[pid])[0]
    photo = png(face_tile(proj.world.people[pid], proj.world.rng))
    result = rectify(proj.paths, pid, images={image_id: photo}, core=proj.core)
    assert result.gallery == "template_removed_while_restricted"
    assert pid not in proj.gallery().stored()
    lifted = restrict(proj.paths, pid, lift=True, core=proj.core)
    assert lifted.status == "completed"
    assert lifted.outcome["gallery"] == "reenrolment_needed"
    assert pid not in proj.gallery().stored()
    body = _completion_body(proj, lifted.request_id)
    assert "enrolled again" in body
    # A second restriction and lift still knows: nothing has enrolled them since.
    restrict(proj.paths, pid, core=proj.core)
    again = restrict(proj.paths, pid, lift=True, core=proj.core)
    assert again.outcome["gallery"] == "reenrolment_needed"


def test_a_rectification_after_consent_to_identification_was_withdrawn_completes(proj):
    # The template not purged yet (no `visage privacy enforce` since the withdrawal): the
    # re-enrolment was refused and the request stayed in progress, as for a restriction.
    pid = proj.pids[0]
    gallery = proj.gallery()
    proj.core.withdraw_consent(pid, ["identification"])
    assert pid in gallery.stored()
    image_id = sorted(proj.images[pid])[0]
    photo = png(face_tile(proj.world.people[pid], np.random.default_rng(5)))
    result = rectify(
        proj.paths,
        pid,
        images={image_id: photo},
        core=proj.core,
        gallery=gallery,
        engine=proj.engine,
    )
    assert RequestBook(proj.core).get(result.request_id).status == "completed"
    assert result.gallery == "template_removed_no_legal_basis"
    assert pid not in gallery.stored()
    assert "no legal basis" in _completion_body(proj, result.request_id)


def test_http_and_cli_lifts_say_what_became_of_a_template_removed_during_the_restriction(
    proj, tmp_path
):
    call = http_caller(proj)
    pid, other = proj.pids[2], proj.pids[3]
    for p in (pid, other):
        assert call("POST", f"/v1/subjects/{p}/restrict", "dpo").status_code == 200
    image_id = sorted(proj.images[pid])[0]
    new_photo = face_tile(proj.world.people[pid], np.random.default_rng(13), noise=3.0)
    rectify(proj.paths, pid, images={image_id: png(new_photo)}, core=proj.core)
    state = call("GET", f"/v1/subjects/{pid}", "auditor").json()
    assert state["gallery"]["enrolled"] is False
    # HTTP: the server's gallery and engine make the template again at the lift.
    r = call("POST", f"/v1/subjects/{pid}/lift", "dpo")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["template"] == "reenrolled" and "made again" in body["note"]
    assert body["subject"]["gallery"]["enrolled"] is True
    assert body["subject"]["gallery"]["searchable"] is True
    # ... from the rectified photograph.
    match = proj.gallery().identify(proj.engine.embed(new_photo[None])[0])
    assert match and match[0].pid == pid
    # A lift that owes nothing says nothing of a template.
    r = call("POST", f"/v1/subjects/{other}/lift", "dpo")
    assert r.status_code == 200 and r.json()["template"] is None and r.json()["note"] is None
    # CLI, without an embedder: the rectification and the lift say what to do, in words.
    runner = CliRunner()
    (proj.paths.models / "embedder.onnx").unlink()
    third = proj.pids[4]
    assert runner.invoke(app, ["privacy", "restrict", third]).exit_code == 0
    photo = tmp_path / "new.png"
    photo.write_bytes(png(face_tile(proj.world.people[third], proj.world.rng)))
    image_id = sorted(proj.images[third])[0]
    done = runner.invoke(app, ["privacy", "rectify", third, "--image", f"{image_id}={photo}"])
    assert done.exit_code == 0, done.output
    assert "no new one is made while" in _flat(done.output)
    lifted = runner.invoke(app, ["privacy", "lift", third, "--json"])
    assert lifted.exit_code == 0, lifted.output
    out = json.loads(lifted.output)
    assert out["template"] == "reenrolment_needed"
    assert "enrolled again" in out["note"] and "no embedder" in out["note"]


def test_http_a_lift_whose_template_cannot_be_made_again_is_in_force_and_says_so(proj, monkeypatch):
    # The lift is recorded, then the template a rectification removed during the restriction
    # is made again. A rectified photograph with more faces than serving.max_faces made the
    # detection raise, answered 422 too_many_faces (a damaged model's output: 503 model_error)
    # to a lift in force, its request left in progress; the client, told the lift failed,
    # sent it again and got 409 not_restricted.
    call = http_caller(proj)
    proj.engine.max_faces = 2
    group, lone, broken = proj.pids[1], proj.pids[2], proj.pids[3]
    people = proj.world.people
    for pid in (group, lone, broken):
        assert call("POST", f"/v1/subjects/{pid}/restrict", "dpo").status_code == 200
    rng = np.random.default_rng(17)
    crowd = {
        pid: png(scene([face_tile(people[p], rng) for p in proj.pids[:3]])) for pid in (group, lone)
    }
    # Every photograph of the one, the first of the other, rectified to a group photograph.
    rectify(
        proj.paths, group, images=dict.fromkeys(proj.images[group], crowd[group]), core=proj.core
    )
    first = sorted(proj.images[lone])[0]
    rectify(proj.paths, lone, images={first: crowd[lone]}, core=proj.core)
    image_id = sorted(proj.images[broken])[0]
    photo = png(face_tile(people[broken], rng))
    rectify(proj.paths, broken, images={image_id: photo}, core=proj.core)

    # No photograph with a single face: the subject must be enrolled again, as the note says.
    r = call("POST", f"/v1/subjects/{group}/lift", "dpo")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["template"] == "reenrolment_needed"
    assert "no single face was found" in body["note"] and "enrolled again" in body["note"]
    assert body["subject"]["gallery"]["enrolled"] is False
    # The group photograph is passed over like one with two faces: made from the others.
    r = call("POST", f"/v1/subjects/{lone}/lift", "dpo")
    assert r.status_code == 200, r.text
    assert r.json()["template"] == "reenrolled"
    # A model that fails on the photographs (non-finite output): the lift stands too.
    damaged = ModelFileError("models/embedder.onnx produced non-finite values (NaN or infinity)")
    monkeypatch.setattr(proj.engine, "embed", lambda *a, **k: (_ for _ in ()).throw(damaged))
    r = call("POST", f"/v1/subjects/{broken}/lift", "dpo")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["template"] == "reenrolment_needed" and "model" in body["note"], body["note"]

    for pid in (group, lone, broken):
        assert not proj.core.subject(pid).restricted
    assert call("GET", "/v1/requests", "dpo").json()["requests"] == []  # each completed
    documented = call.app.openapi()["paths"]["/v1/subjects/{pid}/lift"]["post"]["responses"]
    assert "too_many_faces" not in documented["422"]["description"]


@pytest.mark.parametrize(
    ("damage", "said", "remedy"),
    [
        # Altered or truncated on disk: the re-enrolment after the lift raised SealedFileError.
        (
            lambda photo, _: photo.write_bytes(photo.read_bytes()[:-7]),
            "fails authentication",
            "dvc checkout",
        ),
        # Gone (deleted, or `dvc checkout` not run): it raised a KeyError.
        (lambda photo, _: photo.unlink(), "missing", "dvc checkout"),
        # There but unreadable: a read refused raised PermissionError, and a folder in its place
        # was said to be missing (restoring it would not have helped).
        (lambda photo, mp: _unreadable(photo, "folder", mp), "cannot be read", "permissions"),
        (lambda photo, mp: _unreadable(photo, "denied", mp), "cannot be read", "permissions"),
    ],
    ids=["damaged", "missing", "folder", "denied"],
)
def test_http_a_lift_that_cannot_read_a_photograph_is_in_force_and_says_to_restore_it(
    proj, monkeypatch, damage, said, remedy
):
    # A stored photograph the re-enrolment after the lift could not read made it raise: 500
    # internal_error to a lift in force, its request left in progress, and a client that sent
    # it again got 409 not_restricted.
    call = http_caller(proj)
    pid = proj.pids[2]
    assert call("POST", f"/v1/subjects/{pid}/restrict", "dpo").status_code == 200
    rectified, *kept = sorted(proj.images[pid])
    new_photo = png(face_tile(proj.world.people[pid], np.random.default_rng(13), noise=3.0))
    rectify(proj.paths, pid, images={rectified: new_photo}, core=proj.core)
    photo = proj.paths.raw / pid / f"{kept[0]}.sealed"
    damage(photo, monkeypatch)

    r = call("POST", f"/v1/subjects/{pid}/lift", "dpo")

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["template"] == "reenrolment_needed"
    assert said in body["note"] and remedy in body["note"], body["note"]
    assert photo.name not in body["note"] and str(proj.paths.root) not in body["note"]
    assert body["subject"]["gallery"]["enrolled"] is False
    assert not proj.core.subject(pid).restricted
    assert call("GET", "/v1/requests", "dpo").json()["requests"] == []  # completed


def test_a_verified_objection_or_lift_request_that_finds_nothing_to_change_is_completed_saying_so(
    proj,
):
    """A subject's objection request, verified, then an objection to every purpose recorded by
    the DPO in the meantime: running the request raised 'already objects', and the request
    stayed verified while its deadline ran; the only way out was a denial, which told the
    subject their honoured right was refused. Likewise a lift request for a restriction lifted
    since. Each is completed with what was found; the subject is told; nothing else changes."""
    from visage_ml.privacy.outbox import Outbox, Recipients

    runner = CliRunner()
    pid = proj.pids[0]  # the subject with a contact address: they are told
    Recipients(proj.core).add("partner", name="Partner Ltd", address="dpo@partner.example")
    book = RequestBook(proj.core)
    objection = book.verify(
        book.receive(pid, "objection", details={"purposes": ["training"]}).request_id
    )
    lift = book.verify(book.receive(pid, "restriction", details={"action": "lift"}).request_id)
    proj.core.object(pid, None)  # meanwhile: an objection to every purpose
    seen = len(list(proj.core.ledger.entries()))

    r = runner.invoke(app, ["privacy", "request", "run", objection.request_id, "--json"])
    assert r.exit_code == 0, r.output
    done = json.loads(r.output)
    assert done["status"] == "completed" and done["outcome"] == {"already_objected": ["training"]}
    body = _completion_body(proj, objection.request_id)
    assert "already objected" in body and "training" in body and "stands" in body

    done = run_request(proj.paths, lift.request_id, core=proj.core)
    assert done.status == "completed" and done.outcome == {"not_restricted": True}
    assert "was not restricted" in _completion_body(proj, lift.request_id)

    new = [e.type for e in proj.core.ledger.entries()][seen:]
    # No objection or lift recorded again; the subject hears of each completion, and no
    # recipient is asked to lift a restriction nobody set (Art. 19), nor the subject warned of
    # one being lifted (Art. 18(3)).
    assert "objection" not in new and "restriction.lifted" not in new
    kinds = [m.kind for m in Outbox(proj.core).messages() if m.request_id == lift.request_id]
    assert "art19" not in kinds and "lift_notice" not in kinds
    assert not proj.core.subject(pid).restricted
    # Acting without a request still refuses what would change nothing, recording nothing.
    with pytest.raises(NothingChangedError):
        object_to(proj.paths, pid, purposes=["training"], core=proj.core)
    with pytest.raises(ValueError, match="nothing to lift"):
        restrict(proj.paths, pid, lift=True, core=proj.core)
    assert len(list(proj.core.ledger.entries())) == len(new) + seen


def test_a_restriction_already_set_is_refused_or_its_verified_request_completed_saying_so(proj):
    """A restriction set a second time appended a second restriction.set (and told every
    recipient, Art. 19) though nothing changed; a subject's verified restriction request run
    after the DPO had restricted them did the same. Refused without a request, nothing
    recorded; the request is completed with what was found and the subject told so."""
    from visage_ml.privacy.outbox import Outbox, Recipients

    pid = proj.pids[0]  # the subject with a contact address: they are told
    Recipients(proj.core).add("partner", name="Partner Ltd", address="dpo@partner.example")
    book = RequestBook(proj.core)
    asked = book.verify(book.receive(pid, "restriction", details={"action": "set"}).request_id)
    restrict(proj.paths, pid, core=proj.core)  # meanwhile: the DPO restricts them
    seen = len(list(proj.core.ledger.entries()))

    with pytest.raises(NothingChangedError, match="already restricted") as refused:
        restrict(proj.paths, pid, core=proj.core)
    assert refused.value.code == "already_restricted"
    assert len(list(proj.core.ledger.entries())) == seen  # no request, no event

    r = CliRunner().invoke(app, ["privacy", "request", "run", asked.request_id, "--json"])
    assert r.exit_code == 0, r.output
    done = json.loads(r.output)
    assert done["status"] == "completed" and done["outcome"] == {"already_restricted": True}
    assert "was already restricted" in _completion_body(proj, asked.request_id)
    new = [e.type for e in proj.core.ledger.entries()][seen:]
    assert "restriction.set" not in new
    kinds = [m.kind for m in Outbox(proj.core).messages() if m.request_id == asked.request_id]
    assert "art19" not in kinds and "completion" in kinds
    assert proj.core.subject(pid).restricted
