"""Red-team: the anchor the ledger records (registry ``anchor_sha256``, Gallery.reference)."""

from __future__ import annotations

import numpy as np
import pytest
from serving_fakes import make_person
from test_recognition import Api, morph_photos, score_model

from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.registry import Registry
from visage_ml.privacy.witnessed import forget_checks
from visage_ml.serving.gallery import AnchorUnrecordedError, Gallery, TemplateUnrecordedError


@pytest.fixture
def lenient(project):
    return Api(project, model=score_model(0.0))


def test_a_fold_cache_edited_to_vouch_for_an_older_anchor_is_not_believed(lenient):
    # The attack: keep a's anchor from a half-way morph, let a dpo rectify (the anchor moves and
    # its hash is recorded), then put the old anchor back and write its hash into the registry's
    # fold cache on disk in place of the recorded one, so that a fresh process vouches for it.
    s = lenient
    a = s.pids[0]
    pa = s.world.people[a]
    b = make_person("p" + "b" * 16, np.random.default_rng(7), pa.group, pa.gender)
    assert s.enroll(a, role="dpo", images=morph_photos(s, a, b, 0.375)).status_code == 200
    stale = s.gallery.anchor_path(a).read_bytes()
    stale_sha = s.gallery.reference(a).anchor_sha256
    assert s.enroll(a, role="dpo").status_code == 200
    current_sha = s.gallery.reference(a).anchor_sha256
    assert current_sha != stale_sha
    paths = s.world.paths
    forget_checks()
    # A fold cache of the ledger as it is now (a large ledger's refresh writes one).
    Registry(paths.ledger, cache_every=1).refresh()
    cache = paths.ledger.with_name(paths.ledger.name + ".fold")
    assert current_sha.encode() in cache.read_bytes()
    cache.write_bytes(cache.read_bytes().replace(current_sha.encode(), stale_sha.encode()))
    s.gallery.anchor_path(a).write_bytes(stale)
    forget_checks()
    assert PrivacyCore(paths).registry.refresh().peek(a).anchor_sha256 == current_sha
    s.gallery.refresh()
    with pytest.raises(AnchorUnrecordedError):
        Gallery.open(
            paths,
            model_version=s.gallery.model_version,
            embedding_dim=s.gallery.embedding_dim,
            threshold=s.gallery.threshold,
            core=PrivacyCore(paths),
            embed=s.engine.embed,
        ).reference(a)


def test_an_older_template_put_back_is_not_what_a_re_enrolment_is_checked_against(lenient):
    # The attack: keep a's template file from a dpo enrolment with a half-way morph towards b,
    # let a dpo re-enrol a's own face, then put the old template file back. The search ignores a
    # template the ledger does not record, but an operator's re-enrolment was checked against
    # it (and written over it): with the anchor, it would be one more step of a walk.
    s = lenient
    a = s.pids[0]
    pa = s.world.people[a]
    b = make_person("p" + "b" * 16, np.random.default_rng(7), pa.group, pa.gender)
    assert s.enroll(a, role="dpo", images=morph_photos(s, a, b, 0.375)).status_code == 200
    stale = s.gallery.template_path(a).read_bytes()
    assert s.enroll(a, role="dpo").status_code == 200
    s.gallery.template_path(a).write_bytes(stale)
    s.gallery.refresh()
    with pytest.raises(TemplateUnrecordedError):
        s.gallery.reference(a)
    r = s.enroll(a, images=morph_photos(s, a, b, 0.25))
    assert r.status_code == 409
    assert s.gallery.template_path(a).read_bytes() == stale  # nothing written over it
