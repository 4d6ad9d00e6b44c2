"""Project settings: what every version of a project gets unless its author says otherwise.

One setting today, the default preview mode at close (dsfs.authoring.previews.MODES): a project of
private data sets "stats" once, and no version closed in it stores a sample of its files unless an
author asks for one explicitly (`dsfs close --preview auto`). Projects nest ("vision/2024" is inside
"vision"): a version takes the setting of its project or of the nearest project above it that has
one, so a whole tree of projects is made private by one setting at its top.

The settings live in the store (`projects/<project>/settings.json`, dsfs.store.layout), so every
node and author sees the same. They are read defensively: a store may be written by anyone, and a
settings object that does not parse, or holds a value dsfs does not know, is a warning and counts
as unset (the caller then falls back to its own default), never a failed close.
"""

from __future__ import annotations

import json

from dsfs import paths
from dsfs.authoring.localfiles import warn
from dsfs.authoring.previews import MODES as PREVIEW_MODES
from dsfs.errors import UsageError
from dsfs.store.layout import PROJECT_SETTINGS_LIMIT, Store

DEFAULT_PREVIEW = "auto"


def read_settings(store: Store, project: str) -> dict:
    """The settings a project itself holds (not inherited): {} if none or unreadable."""
    data = store.read_project_settings(project)
    if data is None:
        return {}
    try:
        if len(data) > PROJECT_SETTINGS_LIMIT:
            raise ValueError("over the size limit")
        settings = json.loads(data)
        if not isinstance(settings, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        warn(f"the settings of project {project!r} in {store.display_url} are ignored: {exc}")
        return {}
    preview = settings.get("preview")
    if preview is None:
        return {}
    if preview not in PREVIEW_MODES:
        warn(f"project {project!r} sets an unknown preview mode {preview!r}: ignored")
        return {}
    return {"preview": preview}  # the one setting dsfs knows


def preview_mode(store: Store, project: str) -> tuple[str, str | None]:
    """(the preview mode a version of `project` gets by default, the project that set it or None
    when no project above sets one)."""
    parts = project.split("/")
    for depth in range(len(parts), 0, -1):
        owner = "/".join(parts[:depth])
        mode = read_settings(store, owner).get("preview")
        if mode is not None:
            return mode, owner
    return DEFAULT_PREVIEW, None


def set_preview_mode(store: Store, project: str, mode: str | None) -> None:
    """Set a project's default preview mode, or remove it (None: inherit again)."""
    paths.label("project", project)
    if mode is not None and mode not in PREVIEW_MODES:
        raise UsageError(f"unknown preview mode {mode!r}: use {', '.join(PREVIEW_MODES)}")
    settings = read_settings(store, project)
    if mode is None:
        settings.pop("preview", None)
    else:
        settings["preview"] = mode
    if settings:
        store.write_project_settings(project, json.dumps(settings, sort_keys=True).encode())
    else:
        store.remove_project_settings(project)
