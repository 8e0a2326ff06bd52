"""Login, upload limits and the staging of uploaded files.

* ``PROTOATLAS_AUTH=user:password[:role][,user2:password2[:role]]`` turns the login on
  (roles: ``webapp.access``). Gradio's own login protects most routes;
  :class:`RequireLogin` closes the rest: every request without a valid session cookie is
  refused with 401, except the login page itself and its static assets.
* Uploads: a size limit per file, a number of images per batch, and for zip archives a total
  uncompressed size and a compression ratio; traversal, absolute and symlink members are
  refused by ``engine.data.list_images``. Archives are never extracted.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.data import SUPPORTED_EXTENSIONS, SkippedFile, list_images
from webapp.access import parse_users


class UploadError(ValueError):
    """An upload refused as a whole; the message says what to change."""


@dataclass(frozen=True)
class Limits:
    """Upload limits (defaults suit a CPU Space; all can be set by environment variables)."""

    max_file_mb: int = 500  # PROTOATLAS_MAX_FILE_MB: one uploaded file
    max_images: int = 5000  # PROTOATLAS_MAX_IMAGES: images in one batch
    max_zip_total_mb: int = 4096  # PROTOATLAS_MAX_ZIP_TOTAL_MB: a zip, uncompressed
    max_zip_ratio: float = 100.0  # PROTOATLAS_MAX_ZIP_RATIO: per-member compression ratio

    @classmethod
    def from_env(cls) -> "Limits":
        d = cls()
        return cls(
            max_file_mb=int(os.environ.get("PROTOATLAS_MAX_FILE_MB", d.max_file_mb)),
            max_images=int(os.environ.get("PROTOATLAS_MAX_IMAGES", d.max_images)),
            max_zip_total_mb=int(os.environ.get("PROTOATLAS_MAX_ZIP_TOTAL_MB", d.max_zip_total_mb)),
            max_zip_ratio=float(os.environ.get("PROTOATLAS_MAX_ZIP_RATIO", d.max_zip_ratio)),
        )


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``"alice:pw1,bob:pw2:reviewer"`` -> ``[("alice", "pw1"), ("bob", "pw2")]`` (the
    login pairs; the roles: ``webapp.access.parse_users``); empty -> None."""
    return [(u.name, u.password) for u in parse_users(value)] or None


# ------------------------------------------------------------------------------ login
#: Paths served without a login: the login page and the static files it needs. None of them
#: reads the workspace.
PUBLIC_EXACT = frozenset(
    {
        "/",
        "/login",
        "/login/",
        "/logout",
        "/favicon.ico",
        "/theme.css",
        "/gradio_api/theme.css",
        "/manifest.json",
        "/robots.txt",
        "/gradio_api/login",
        "/gradio_api/login/",
        # Gradio calls it itself once at launch (runs startup events once;
        # answers true/false, nothing else)
        "/gradio_api/startup-events",
    }
)
#: The path prefix of the server's other workspaces (``webapp.workspaces``).
MOUNTED_WORKSPACE = re.compile(r"^/w/[A-Za-z0-9][A-Za-z0-9_.-]*(?=/|$)")
PUBLIC_PREFIXES = (
    "/assets/",
    "/static/",
    "/svelte/",
    "/pwa_icon",
    "/gradio_api/assets/",
    "/gradio_api/static/",
)


class RequireLogin:
    """ASGI middleware for Gradio's ``App``: refuse every non-public request that has no
    valid session cookie (Gradio's login sets it). Installed through ``app_kwargs``."""

    def __init__(self, app) -> None:
        self.app = app

    @staticmethod
    def is_public(path: str) -> bool:
        return path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)

    @staticmethod
    def logged_in(scope) -> bool:
        gradio_app = scope.get("app")
        tokens = getattr(gradio_app, "tokens", None)
        cookie_id = getattr(gradio_app, "cookie_id", None)
        if not tokens or cookie_id is None:
            return False
        cookies: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    k, _, v = part.strip().partition("=")
                    cookies[k] = v
        for key in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            if cookies.get(key) in tokens:
                return True
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        gradio_app = scope.get("app")
        if getattr(gradio_app, "auth", None) is None:  # login off
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "") or ""
        path = scope.get("path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        # another workspace's app (w/<name>/...): its own paths are public or not alike
        path = MOUNTED_WORKSPACE.sub("", path, count=1) or "/"
        if self.is_public(path) or self.logged_in(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": "Not authenticated: log in first"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------ uploads
@dataclass
class StagedUpload:
    """What the service reads: a folder or one zip; plus files skipped before it."""

    source: Path | None
    n_images: int
    skipped: list[SkippedFile]
    cleanup: Path | None = None

    def close(self) -> None:
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)


def _path_of(item) -> Path:
    if isinstance(item, (str, os.PathLike)):
        return Path(item)
    for attr in ("path", "name"):
        value = getattr(item, attr, None)
        if isinstance(value, str):
            return Path(value)
    if isinstance(item, dict) and "path" in item:
        return Path(item["path"])
    raise UploadError(f"cannot read the uploaded item {item!r}")


def stage_upload(
    files: Sequence | None, staging_root: Path, limits: Limits, what: str = "images"
) -> StagedUpload | None:
    """Check an upload against the limits and give the service one source to read.

    ``files``: the uploaded paths: one ``.zip`` (any folder depth inside), or image files.
    Returns ``None`` when nothing was uploaded. Raises :class:`UploadError` when the upload
    as a whole is refused (unsafe or too large zip, too many images, several zips).
    """
    paths = [_path_of(f) for f in (files or []) if f]
    if not paths:
        return None
    max_bytes = limits.max_file_mb * 2**20
    for p in paths:
        if not p.is_file():
            raise UploadError(f"{what}: the uploaded file {p.name} is missing; upload it again")
        if p.stat().st_size > max_bytes:
            raise UploadError(
                f"{what}: {p.name} is {p.stat().st_size / 2**20:.0f} MB, over the "
                f"{limits.max_file_mb} MB limit per file"
            )
    zips = [p for p in paths if p.suffix.lower() == ".zip"]
    if zips:
        if len(paths) > 1:
            raise UploadError(
                f"{what}: upload either one .zip archive or image files, not "
                f"{len(zips)} archive(s) together with {len(paths) - 1} other "
                f"file(s)"
            )
        return _staged_zip(zips[0], limits, what)
    skipped: list[SkippedFile] = []
    images = []
    for p in paths:
        if p.suffix.lower() in SUPPORTED_EXTENSIONS:
            images.append(p)
        else:
            kind = p.suffix or "no extension"
            skipped.append(
                SkippedFile(
                    p.name, f"not an image file ({kind}); expected png, jpg, bmp, tif or one .zip"
                )
            )
    if not images:
        raise UploadError(
            f"{what}: none of the {len(paths)} uploaded file(s) is an image "
            "(png, jpg, bmp, tif) or a .zip archive"
        )
    if len(images) > limits.max_images:
        raise UploadError(
            f"{what}: {len(images)} images, over the limit of "
            f"{limits.max_images} per batch; split the batch"
        )
    folder = _link_into(images, staging_root / f"{what}-{uuid.uuid4().hex[:12]}")
    return StagedUpload(folder, len(images), skipped, cleanup=folder)


def _staged_zip(z: Path, limits: Limits, what: str) -> StagedUpload:
    """One uploaded zip, checked (valid, safe, within the size, ratio and count limits)."""
    if not zipfile.is_zipfile(z):
        raise UploadError(f"{what}: {z.name} is not a valid zip archive")
    try:
        refs = list_images(
            z, max_total_bytes=limits.max_zip_total_mb * 2**20, max_ratio=limits.max_zip_ratio
        )
    except ValueError as exc:  # ArchiveError is a ValueError
        raise UploadError(f"{what}: {z.name} refused: {public_message(exc)}") from exc
    if not refs:
        raise UploadError(f"{what}: {z.name} holds no png, jpg, bmp or tif image")
    if len(refs) > limits.max_images:
        raise UploadError(
            f"{what}: {len(refs)} images, over the limit of "
            f"{limits.max_images} per batch; split the batch"
        )
    return StagedUpload(z, len(refs), [])


def _link_into(images: Sequence[Path], folder: Path) -> Path:
    """Hard-link (else copy) the uploaded images into a new staging folder, renaming names
    that repeat (ignoring case)."""
    folder.mkdir(parents=True)
    used: set[str] = set()
    for p in images:
        name = p.name
        stem, ext = os.path.splitext(name)
        n = 1
        while name.lower() in used:
            name = f"{stem}-{n}{ext}"
            n += 1
        used.add(name.lower())
        target = folder / name
        try:
            os.link(p, target)
        except OSError:
            shutil.copyfile(p, target)
    return folder


#: An absolute path of the server (two or more components), as messages may quote it.
_ABS_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[\\/][\w\-~ ][\w.\-~ ]*){2,}")


def public_message(text: object) -> str:
    """A message fit to show a user: every absolute server path is cut to its last
    component (``/tmp/gradio/<sha>/evil.zip`` -> ``evil.zip``)."""
    return _ABS_PATH.sub(lambda m: re.split(r"[\\/]", m.group(0))[-1], str(text))


def escape(text: object) -> str:
    """HTML-escape a user string for an HTML context (cards, attributes)."""
    return html.escape(str(text), quote=True)


#: Characters that Markdown reads as formatting.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def md_escape(text: object) -> str:
    """Escape a user string for a Markdown context (messages, questions, headers): HTML
    entities for ``<>&`` and a backslash before every Markdown character, so that a type
    named ``**x**<img src=x onerror=...>`` shows exactly as typed (the entities hold no
    Markdown character, so the two steps do not interfere)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))
