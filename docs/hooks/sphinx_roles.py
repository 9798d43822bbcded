"""mkdocs hook: the package's docstrings use a little reStructuredText (Sphinx roles such as ``:func:`load_config```,
``~`` to shorten a dotted name, ``::`` before a literal block), which mkdocstrings renders as Markdown. Tidy the
rendered pages so that ``:func:`~twostream.x.y``` reads as ``twostream.x.y`` and a lone ``::`` disappears."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|attr|mod|exc|obj|const|ref):(?=<code)")
_TILDE = re.compile(r"<code>~(?=[\w.]+</code>)")
_LITERAL_MARK = re.compile(r"<p>::</p>\s*")


def on_page_content(html: str, **kwargs) -> str:
    return _LITERAL_MARK.sub("", _TILDE.sub("<code>", _ROLE.sub("", html)))
