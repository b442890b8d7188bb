"""Users as config data on the log: `UserSaved`/`UserDeleted`, folded into a directory.

A user's `after` holds its public record (role, whether the password must change) and its
`credential`: the argon2 hash *sealed* (encrypted, Fernet) with a key derived from the UI's secret
key. Every event's payload is projected into ClickHouse (the events and audit tables), so the
plain hash must never be on the log; the sealed form is useless without the key, and the audit
page shows only that the credential changed. Commands here are pure: they return envelopes.

Errors: `UserInvalid` (permanent): a name, role or password that cannot be accepted.
"""

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

from infra.catalogue import ConfigChanged, UserDeleted, UserSaved
from infra.errors import PermanentError
from infra.events import Envelope

MIN_PASSWORD_CHARS = 10
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HASHER = PasswordHasher()
# Verifying against this keeps a login for an unknown user as slow as one for a known user.
_DUMMY_HASH = _HASHER.hash("talaria: no such user")


class UserInvalid(PermanentError):
    """A user name, role or password that cannot be accepted."""


class Role(StrEnum):
    ADMIN = "admin"
    READONLY = "readonly"


@dataclass(frozen=True, kw_only=True)
class User:
    name: str
    role: Role
    must_change_password: bool
    credential: str  # the sealed argon2 hash

    def public(self) -> dict[str, object]:
        return {"role": self.role.value, "must_change_password": self.must_change_password}

    def record(self) -> dict[str, object]:
        """The `after` of a `UserSaved` for this user."""
        return {**self.public(), "credential": self.credential}


class Sealer:
    """Seals argon2 hashes for the log and checks passwords against sealed hashes."""

    def __init__(self, secret: str) -> None:
        key = hashlib.sha256(f"talaria credential seal\0{secret}".encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, password: str) -> str:
        check_password(password)
        return self._fernet.encrypt(_HASHER.hash(password).encode()).decode()

    def verify(self, user: User | None, password: str) -> bool:
        """Whether `password` is `user`'s; as slow for a missing user as for a wrong password."""
        try:
            stored = self._fernet.decrypt(user.credential.encode()).decode() if user else None
        except InvalidToken:
            stored = None  # sealed with another secret key: the password must be reset
        try:
            return _HASHER.verify(stored or _DUMMY_HASH, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserInvalid(f"a password has at least {MIN_PASSWORD_CHARS} characters")


def check_username(name: str) -> None:
    if not USERNAME.fullmatch(name):
        raise UserInvalid(
            "a user name is 1-64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def fold_user(users: Mapping[str, User], change: ConfigChanged) -> dict[str, User]:
    """The directory after one config event (other kinds leave it as it was)."""
    folded = dict(users)
    if isinstance(change, UserDeleted):
        folded.pop(change.name, None)
    elif isinstance(change, UserSaved) and change.after is not None:
        folded[change.name] = User(
            name=change.name,
            role=Role(change.after["role"]),
            must_change_password=bool(change.after.get("must_change_password")),
            credential=str(change.after["credential"]),
        )
    return folded


def _saved(before: User | None, after: User, *, actor: str, source: str) -> Envelope:
    payload = UserSaved(
        name=after.name, before=before.record() if before else None, after=after.record()
    )
    return Envelope(payload=payload, source=source, subject=payload.partition_key(), actor=actor)


def create_user(
    *,
    sealer: Sealer,
    name: str,
    role: Role,
    password: str,
    must_change_password: bool,
    actor: str,
    source: str,
) -> Envelope:
    check_username(name)
    user = User(
        name=name,
        role=role,
        must_change_password=must_change_password,
        credential=sealer.seal(password),
    )
    return _saved(None, user, actor=actor, source=source)


def set_password(
    user: User, *, sealer: Sealer, password: str, must_change: bool, actor: str, source: str
) -> Envelope:
    """The user's own change (must_change False) or an admin's reset (True)."""
    changed = replace(user, credential=sealer.seal(password), must_change_password=must_change)
    return _saved(user, changed, actor=actor, source=source)


def set_role(user: User, *, role: Role, actor: str, source: str) -> Envelope:
    return _saved(user, replace(user, role=role), actor=actor, source=source)


def delete_user(user: User, *, actor: str, source: str) -> Envelope:
    payload = UserDeleted(name=user.name, before=user.record(), after=None)
    return Envelope(payload=payload, source=source, subject=payload.partition_key(), actor=actor)


def session_fingerprint(user: User) -> str:
    """Changes whenever the credential changes, so a password change ends older sessions."""
    return hashlib.sha256(user.credential.encode()).hexdigest()[:24]
