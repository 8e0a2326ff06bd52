"""Roles: who may read, who may review, who may change the workspace.

* ``viewer`` reads every tab, picture and export file list, and acts on nothing.
* ``reviewer`` also confirms, rejects, renames, merges, splits, moves, answers questions
  and undoes their own decisions.
* ``admin`` also uploads batches, retrains, exports and creates workspaces.

Where the roles come from (``Access``):

* ``PROTOATLAS_AUTH=user:password[:role][,user2:password2[:role]]``: the login. An entry
  without a role is an ``admin`` (every logged-in user could do everything before roles
  existed). A password may hold ``:``; one that ends in ``:viewer``, ``:reviewer`` or
  ``:admin`` must then give the role too (``bob:pa:admin:reviewer``).
* On a Hugging Face Space with ``hf_oauth: true``: ``PROTOATLAS_HF_ROLES=alice:admin,bob:reviewer``
  gives signed-in HF users their roles; every other HF user gets
  ``PROTOATLAS_HF_DEFAULT_ROLE`` (default ``viewer``), a visitor not signed in ``viewer``.
  Without ``PROTOATLAS_HF_ROLES`` OAuth only names the reviewer.
* With neither (a local, single-user server) everyone is an ``admin``.

Every event handler of the app is marked with the role it needs (:func:`needs`);
:func:`guard` wraps each handler that needs more than ``viewer`` with the check and refuses
to build an app that has an unmarked handler, so a new button cannot slip through.
"""

from __future__ import annotations

import enum
import functools
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gradio as gr

AUTH_ENV = "PROTOATLAS_AUTH"
HF_ROLES_ENV = "PROTOATLAS_HF_ROLES"
HF_DEFAULT_ENV = "PROTOATLAS_HF_DEFAULT_ROLE"
#: The attribute :func:`needs` sets on a handler.
ROLE_ATTR = "__protoatlas_role__"


class Role(enum.IntEnum):
    """Ordered: a role may do everything a lower one may."""

    VIEWER = 1
    REVIEWER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str, what: str) -> "Role":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(r.label for r in cls)
            raise ValueError(f"{what}: unknown role '{text.strip()}' (one of {names})") from None


#: The role of a login entry that names none.
DEFAULT_LOGIN_ROLE = Role.ADMIN
#: The role of an HF user not listed in ``PROTOATLAS_HF_ROLES``.
DEFAULT_HF_ROLE = Role.VIEWER


@dataclass(frozen=True)
class LoginUser:
    name: str
    password: str
    role: Role


def parse_users(value: str | None) -> list[LoginUser]:
    """``"alice:pw1,bob:pw2:reviewer"`` -> the users, their passwords and roles; empty ->
    ``[]``. Raises ``ValueError`` naming ``PROTOATLAS_AUTH`` on a malformed entry."""
    users: list[LoginUser] = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, rest = item.partition(":")
        role = DEFAULT_LOGIN_ROLE
        head, colon, tail = rest.rpartition(":")
        if colon and tail.strip().upper() in Role.__members__:
            rest, role = head, Role.parse(tail, AUTH_ENV)
        if not sep or not user.strip() or not rest:
            raise ValueError(
                f"{AUTH_ENV} must be 'user:password[:role]' (comma-separated for "
                f"several users); got an entry without a user or password"
            )
        if any(u.name == user.strip() for u in users):
            raise ValueError(f"{AUTH_ENV}: the user '{user.strip()}' is given twice")
        users.append(LoginUser(user.strip(), rest, role))
    return users


def parse_roles(value: str | None, what: str = HF_ROLES_ENV) -> dict[str, Role]:
    """``"alice:admin,bob:reviewer"`` -> ``{"alice": ADMIN, "bob": REVIEWER}``."""
    roles: dict[str, Role] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        user, sep, role = item.strip().rpartition(":")
        if not sep or not user.strip():
            raise ValueError(f"{what} must be 'user:role' (comma-separated); got '{item.strip()}'")
        roles[user.strip()] = Role.parse(role, what)
    return roles


@dataclass(frozen=True)
class Access:
    """Who has which role. ``users``: the login names (``PROTOATLAS_AUTH``); ``hf_users``:
    Hugging Face user names (``PROTOATLAS_HF_ROLES``); ``hf_default``: any other HF user."""

    users: Mapping[str, Role] = field(default_factory=dict)
    hf_users: Mapping[str, Role] = field(default_factory=dict)
    hf_default: Role = DEFAULT_HF_ROLE

    @property
    def restricted(self) -> bool:
        """False on a server where everyone is an admin (no login, no HF roles)."""
        return bool(self.users or self.hf_users)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Access":
        env = os.environ if env is None else env
        users = {u.name: u.role for u in parse_users(env.get(AUTH_ENV))}
        hf_users = parse_roles(env.get(HF_ROLES_ENV))
        default = env.get(HF_DEFAULT_ENV)
        hf_default = Role.parse(default, HF_DEFAULT_ENV) if default else DEFAULT_HF_ROLE
        return cls(users, hf_users, hf_default)

    def role(self, login: str | None, hf_user: str | None) -> Role:
        """The role of a request's login name, else its HF user name, else a visitor."""
        if not self.restricted:
            return Role.ADMIN
        if login and login in self.users:
            return self.users[login]
        if hf_user and self.hf_users:
            return self.hf_users.get(hf_user, self.hf_default)
        return Role.VIEWER


# ------------------------------------------------------------------------------ handlers
F = TypeVar("F", bound=Callable[..., Any])


def needs(role: Role) -> Callable[[F], F]:
    """Mark an event handler with the role it needs (the function itself is returned)."""

    def mark(fn: F) -> F:
        setattr(fn, ROLE_ATTR, role)
        return fn

    return mark


#: Handlers that only read.
read = needs(Role.VIEWER)


class UnmarkedHandlerError(TypeError):
    """An event handler without a role, or one needing a role that takes no request."""


class NotAllowedError(gr.Error):
    """Shown to a user whose role does not allow the action."""


def _takes_request(fn: Callable) -> bool:
    for p in inspect.signature(fn).parameters.values():
        a = p.annotation
        if a is gr.Request or (isinstance(a, str) and a.split("|")[0].strip() == "gr.Request"):
            return True
    return False


def _request_in(args: tuple, kwargs: dict) -> gr.Request | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, gr.Request):
            return value
    return None


def _checked(fn: Callable, role: Role, check: Callable[[gr.Request | None, Role], None]):
    """``fn`` with the role check first, of the same kind (plain, generator, async)."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen(*args, **kwargs):
            check(_request_in(args, kwargs), role)
            async for item in fn(*args, **kwargs):
                yield item

        return agen
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coro(*args, **kwargs):
            check(_request_in(args, kwargs), role)
            return await fn(*args, **kwargs)

        return coro
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args, **kwargs):
            check(_request_in(args, kwargs), role)
            yield from fn(*args, **kwargs)

        return gen

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        check(_request_in(args, kwargs), role)
        return fn(*args, **kwargs)

    return plain


def guard(blocks: gr.Blocks, check: Callable[[gr.Request | None, Role], None]) -> dict[Role, int]:
    """Wrap every handler of ``blocks`` that needs more than ``viewer`` with ``check``.

    Raises :class:`UnmarkedHandlerError` for a handler without a role, or one needing a
    role that takes no ``gr.Request`` (it could not tell who calls). Returns the number of
    handlers per role."""
    counts = {r: 0 for r in Role}
    for block_fn in blocks.fns.values():
        fn = block_fn.fn
        if fn is None or block_fn.is_cancel_function:  # a js-only event, Gradio's own
            continue
        role = getattr(fn, ROLE_ATTR, None)
        if role is None:
            raise UnmarkedHandlerError(
                f"event handler {getattr(fn, '__qualname__', fn)!r} has no role: mark it "
                "with webapp.access.needs(Role...) or read"
            )
        counts[role] += 1
        if role == Role.VIEWER:
            continue
        if not _takes_request(fn):
            raise UnmarkedHandlerError(
                f"event handler {fn.__qualname__!r} needs the {role.label} role but takes "
                "no gr.Request parameter, so it cannot tell who calls"
            )
        block_fn.fn = _checked(fn, role, check)
    return counts
