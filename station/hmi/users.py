"""HMI users: names, roles and argon2 password hashes in one JSON file beside the station YAML.

Roles are ordered: viewer (anyone, no login, read only) < operator (acknowledge alarms, review rejects)
< engineer (settings) < admin (users). There is no default account and no default password: the
first user is made with `station users add NAME --role admin`. The file is rewritten atomically and
is not world-readable; the HMI re-reads it when it changes, so a removed user or a changed role
takes effect on that user's next request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

log = logging.getLogger(__name__)

ROLES = ("viewer", "operator", "engineer", "admin")
LOGIN_ROLES = ROLES[1:]  # a viewer needs no account
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
MIN_PASSWORD = 8
FILE_VERSION = 1

_hasher = PasswordHasher()
# Verified against when the user name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("no such user: timing only")


class UserError(ValueError):
    """A bad user name, role or password, or an unreadable users file; the message says which."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, role: str) -> bool:
        return role_rank(self.role) >= role_rank(role)


def role_rank(role: str) -> int:
    return ROLES.index(role) if role in ROLES else -1


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"user name {name!r}: 1 to 32 letters, digits, '_', '.' or '-'")
    return name


def check_role(role: str) -> str:
    if role not in LOGIN_ROLES:
        raise UserError(f"role {role!r}: one of {', '.join(LOGIN_ROLES)} (viewers need no account)")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    return password


class UserStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime_ns: int | None = None
        self._users: dict[str, dict[str, Any]] = {}

    # ---- reading ---------------------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        """The users, re-read when the file changed on disk (the CLI may add users while the HMI runs)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._users, self._mtime_ns = {}, None
            return self._users
        if mtime == self._mtime_ns:
            return self._users
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            users = data["users"]
            if not isinstance(users, dict):
                raise TypeError("'users' is not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"users file {self.path} is unreadable: {exc}") from exc
        self._users, self._mtime_ns = users, mtime
        return users

    def get(self, name: str) -> User | None:
        with self._lock:
            entry = self._load().get(name)
        if entry is None or entry.get("role") not in LOGIN_ROLES:
            return None
        return User(name=name, role=entry["role"])

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            users = self._load()
            return [{"name": n, "role": e.get("role"), "created_at": e.get("created_at"),
                     "created_by": e.get("created_by")} for n, e in sorted(users.items())]

    def authenticate(self, name: str, password: str) -> User | None:
        with self._lock:
            entry = self._load().get(name)
        stored = entry.get("hash") if entry else None
        try:
            _hasher.verify(stored or _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if entry is None:
            return None
        return self.get(name)

    # ---- changing --------------------------------------------------------------------------------
    def add(self, name: str, role: str, password: str, *, by: str, replace: bool = False) -> None:
        check_name(name)
        check_role(role)
        check_password(password)
        with self._lock:
            users = dict(self._load())
            if name in users and not replace:
                raise UserError(f"user {name!r} exists (use `station users passwd` or the admin page)")
            users[name] = {"role": role, "hash": _hasher.hash(password),
                           "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "created_by": by}
            self._save(users)

    def set_role(self, name: str, role: str) -> None:
        check_role(role)
        with self._lock:
            users = dict(self._load())
            if name not in users:
                raise UserError(f"no user {name!r}")
            users[name] = {**users[name], "role": role}
            self._save(users)

    def set_password(self, name: str, password: str) -> None:
        check_password(password)
        with self._lock:
            users = dict(self._load())
            if name not in users:
                raise UserError(f"no user {name!r}")
            users[name] = {**users[name], "hash": _hasher.hash(password)}
            self._save(users)

    def remove(self, name: str) -> None:
        with self._lock:
            users = dict(self._load())
            if name not in users:
                raise UserError(f"no user {name!r}")
            del users[name]
            self._save(users)

    def _save(self, users: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        text = json.dumps({"version": FILE_VERSION, "users": users}, indent=2, sort_keys=True) + "\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _match_group(tmp, self.path.parent)
        os.replace(tmp, self.path)
        self._mtime_ns = None  # re-read on next access
        log.info("users file %s written (%d user(s))", self.path, len(users))


def _match_group(path: Path, folder: Path) -> None:
    """Run as root (`station users add` on the line PC), give the file the config folder's group so the
    HMI's service account can read it."""
    if os.geteuid() != 0:
        return
    try:
        os.chown(path, 0, folder.stat().st_gid)
    except OSError as exc:
        log.warning("could not give %s the group of %s: %s", path, folder, exc)
