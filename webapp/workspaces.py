"""Several workspaces (one per product line) in one server: the workspace the server was
started on is served at ``/``, every other one of the same home folder at ``w/<name>/``,
each with its own review app (its own service, queue, caches and undo stacks), so that a
second product never mixes into the first.

A workspace's app is built and mounted the first time someone opens it
(``pa/open/<name>``, which then redirects to it); creating one from the UI opens a new
folder in the home and goes there the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from protoatlas.service import check_workspace_name, workspace_names

if TYPE_CHECKING:
    from engine.config import ProtoAtlasConfig
    from webapp.app import ReviewApp

log = logging.getLogger(__name__)

#: Where the other workspaces are served, below the server's root.
MOUNT_PREFIX = "w"
#: From a mounted workspace's page back to the server's root (``w/<name>/`` -> ``/``).
FROM_MOUNT = "../../"


class WorkspaceHost:
    """The workspaces of one home folder and the apps that serve them.

    ``make_app(service, base)`` builds the review app of a workspace (``base``: the
    relative path from its page to the server's root); ``options`` are the keyword
    arguments its Blocks are mounted with (theme, CSS, login, limits)."""

    def __init__(
        self,
        home: str | Path,
        first: str,
        *,
        config: ProtoAtlasConfig,
        make_app: Callable[[Any, str], ReviewApp],
    ) -> None:
        self.home = Path(home)
        self.first = first
        self.config = config
        self.make_app = make_app
        self.apps: dict[str, ReviewApp] = {}
        self.server_app: Any = None
        self.options: dict[str, Any] = {}
        self.routes: Callable[[Any], list[Route]] = lambda views: []
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ names and links
    def names(self) -> list[str]:
        """Every workspace of the home folder (the first one included, even while empty)."""
        return sorted(set(workspace_names(self.home)) | {self.first})

    @staticmethod
    def href(name: str, base: str) -> str:
        """The link that opens workspace ``name`` from a page ``base`` away from the root."""
        return f"{base}pa/open/{name}"

    def choices(self, base: str) -> list[tuple[str, str]]:
        """(name, link) of every workspace, for a page ``base`` away from the root."""
        return [(name, self.href(name, base)) for name in self.names()]

    # ------------------------------------------------------------------ create and open
    def create(self, name: str) -> str:
        """Creates the workspace ``name`` (a ValueError naming the problem if it may not be
        created); returns its name. Opening it mounts its app."""
        from protoatlas.service import WorkspaceService

        name = check_workspace_name(str(name or "").strip())
        if name in self.names():
            raise ValueError(f"a workspace named {name!r} exists already: choose it in the list")
        WorkspaceService(self.home, name, config=self.config).close()
        return name

    async def open(self, name: str) -> str:
        """Mounts workspace ``name``'s app unless it is mounted; returns its path below the
        root (``""`` for the first workspace)."""
        if name == self.first:
            return ""
        if name not in self.apps:
            async with self._lock:
                if name not in self.apps:
                    app = await run_in_threadpool(self._build, name)
                    await self._mount(name, app)
                    self.apps[name] = app
        return f"{MOUNT_PREFIX}/{name}/"

    def _build(self, name: str) -> ReviewApp:
        from protoatlas.service import WorkspaceService

        service = WorkspaceService(self.home, name, config=self.config)
        return self.make_app(service, FROM_MOUNT)

    async def _mount(self, name: str, app: ReviewApp) -> None:
        blocks = app.blocks
        blocks.queue(default_concurrency_limit=8, max_size=200)
        options = dict(self.options)
        options["allowed_paths"] = [
            str(app.views.renderer.cache_dir),
            str(app.views.root / "exports"),
        ]
        gr.mount_gradio_app(
            self.server_app,
            blocks,
            path=f"/{MOUNT_PREFIX}/{name}",
            app_kwargs={"routes": self.routes(app.views)},
            **options,
        )
        mounted = self.server_app.routes[-1]
        assert isinstance(mounted, Mount), mounted
        if getattr(self.server_app, "tokens", None) is not None and options.get("auth"):
            # one login for every workspace: the mounted app reads the root's sessions
            mounted.app.tokens = self.server_app.tokens
            mounted.app.cookie_id = self.server_app.cookie_id
        # the server is running: start the new app's queue as its startup would have
        blocks.run_startup_events()
        await blocks.run_extra_startup_events()
        app.views.warm_in_background()
        (app.views.root / "exports").mkdir(exist_ok=True)
        log.info("workspace %s mounted at /%s/%s/", name, MOUNT_PREFIX, name)

    def close(self) -> None:
        for app in self.apps.values():
            app.close()
            app.service.close()
        self.apps.clear()

    # ------------------------------------------------------------------ the route
    def open_route(self) -> Route:
        """``pa/open/<name>``: mount the workspace if needed, then go there."""

        async def endpoint(request: Request) -> Response:
            name = request.path_params["name"]
            if name not in self.names():
                return JSONResponse({"detail": f"no workspace named {name!r}"}, status_code=404)
            try:
                where = await self.open(name)
            except Exception:  # a workspace that cannot be opened: say so, keep serving
                log.exception("workspace %s could not be opened", name)
                return JSONResponse(
                    {"detail": f"workspace {name!r} could not be opened (see the server log)"},
                    status_code=500,
                )
            # relative to pa/open/<name>: two levels up is the server's root
            return RedirectResponse(FROM_MOUNT + where, status_code=303)

        return Route("/pa/open/{name}", endpoint)
