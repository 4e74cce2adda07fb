"""Drop duplicate inline scripts from each HTML page.

Sphinx 7.4 registers an inline script that an extension adds after the builder starts twice (once
as ``filename=None``, once as ``''``), so sphinx-thebe and sphinx-togglebutton end up declaring
the same ``const`` twice and every page logs a JavaScript error. This keeps the first of each.
"""

from __future__ import annotations

from typing import Any


def _unique_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = (
            getattr(script, "filename", script) or "",
            tuple(sorted(getattr(script, "attributes", {}).items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
