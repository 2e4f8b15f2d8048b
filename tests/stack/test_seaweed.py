"""The stack's S3: signed requests only, and deleted objects leave the disk after vacuum."""

from __future__ import annotations

import os

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from visage_ml.stack.seaweed import scan


def _client(stack, **kw):
    return boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1", **kw)


def test_unsigned_and_wrongly_signed_requests_refused(stack):
    with pytest.raises(ClientError) as anon:
        _client(stack, config=Config(signature_version=UNSIGNED)).list_objects_v2(
            Bucket=stack.s3_bucket
        )
    assert anon.value.response["Error"]["Code"] == "AccessDenied"
    wrong = _client(stack, aws_access_key_id=stack.s3_access_key, aws_secret_access_key="x" * 40)
    with pytest.raises(ClientError) as bad:
        wrong.list_objects_v2(Bucket=stack.s3_bucket)
    assert bad.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_deleted_object_bytes_leave_volume_files_after_vacuum(stack):
    """The attack: an operator greps SeaweedFS's data folder for an erased object's bytes."""
    s3 = stack.s3.client()
    # Sealed files are ciphertext: random bytes stand for the object of an erased subject.
    erased, kept = os.urandom(6000), os.urandom(6000)
    s3.put_object(Bucket=stack.s3_bucket, Key="dvc/files/md5/ee/erased", Body=erased)
    s3.put_object(Bucket=stack.s3_bucket, Key="dvc/files/md5/kk/kept", Body=kept)
    needles = stack.s3.chunk_ids("dvc/files/md5/ee/erased")
    assert needles
    assert scan(stack.s3_data_dir, erased[1000:1064])
    s3.delete_object(Bucket=stack.s3_bucket, Key="dvc/files/md5/ee/erased")
    # Deleted through S3 but not vacuumed: the bytes are still on disk (what vacuum is for).
    assert scan(stack.s3_data_dir, erased[1000:1064])
    report = stack.s3.vacuum(wait_for=needles, timeout=30)
    assert report["seconds"] < 10
    assert scan(stack.s3_data_dir, erased[1000:1064]) == []
    assert not any(stack.s3.needle_exists(n) for n in needles)
    assert stack.s3.garbage_bytes() == 0
    # Other objects survive the compaction intact.
    got = s3.get_object(Bucket=stack.s3_bucket, Key="dvc/files/md5/kk/kept")["Body"].read()
    assert got == kept


def test_internal_filer_and_volume_servers_refuse_reads_without_token(stack):
    """The attack: a local user skips S3's signature check and asks the filer or the volume
    server (also on loopback) for an object directly."""
    import urllib.error
    import urllib.request

    body = os.urandom(3000)
    stack.s3.client().put_object(Bucket=stack.s3_bucket, Key="dvc/files/md5/ff/direct", Body=body)
    fid = stack.s3.chunk_ids("dvc/files/md5/ff/direct")[0]  # with the server's own token
    for url in (
        f"{stack.s3.filer_url}/buckets/{stack.s3_bucket}/dvc/files/md5/ff/direct",
        f"{stack.s3.filer_url}/buckets/{stack.s3_bucket}/dvc/files/md5/ff/direct?metadata=true",
        f"{stack.s3.volume_url}/{fid}",
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)  # noqa: S310 - loopback test URL
        assert refused.value.code == 401, url
    assert stack.s3.needle_exists(fid)
    assert stack.s3.security_file.stat().st_mode & 0o077 == 0


def test_weed_writes_its_log_files_in_the_stack_folder_not_the_temporary_one(stack):
    # weed's glog files (weed.<host>.<user>.log.INFO...) went to /tmp at every start, and
    # stayed there: about 170 on this machine after a day of test runs.
    logs = stack.s3.log_dir
    assert any(p.name.startswith("weed") for p in logs.iterdir()), list(logs.iterdir())
