"""mkdocs hook: the package's docstrings cross-reference with Sphinx roles (``:func:`load_config```), which
mkdocstrings renders as Markdown, leaving the role's name in front of the code span. Drop the role names from the
rendered API pages so that ``:func:`x``` reads as ``x``."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|attr|mod|exc|obj|const|ref):(?=<code)")


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub("", html)
