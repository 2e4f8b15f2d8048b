"""The jinja2 environment of the HTML pages in ``privacy/templates`` (the notice, the records,
the access page, the certificate page): one set of settings, autoescaped, strict.

Every page includes ``_style.css``; a change to it changes the notice's bytes and so its
version (:mod:`visage_ml.privacy.documents`), so a page's own styles stay in its template.
"""

from __future__ import annotations

import functools

import jinja2


@functools.cache
def template_env() -> jinja2.Environment:
    """The environment: templates from the package, every value HTML-escaped, an undefined
    name an error rather than an empty string."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("visage_ml", "privacy/templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=True),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
