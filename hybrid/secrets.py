"""Secrets: what counts as one, and their redaction wherever a value leaves the orchestrator or an
experiment (MLflow, the LLM prompt, reports, files at rest). One module, used by every layer above.

Three rules, decided here once:

- **Names.** A name looks secret when one of its words is a secret word (``HF_TOKEN``, ``apiKey``,
  ``db-password``, ``AUTHTOKEN``); a word merely containing one is not (``tokens``, ``eval_tokens``,
  ``TOKENIZERS_PARALLELISM``, ``author``, ``PWD``).
- **Text.** :func:`scrub` redacts ``NAME=value`` / ``NAME: value`` / ``--name value`` where NAME
  looks secret and the value is not a plain number or flag (``token_budget: 1000`` and
  ``num_key_value_heads=8`` stay), ``Bearer <token>``, URL passwords, and every known secret value
  (the values of secret-named environment variables, plus those handed in, e.g. ``target.env``'s).
- **The orchestrator's own credentials** (the LLM's, MLflow's, SkyPilot's) never enter an
  experiment's environment: :func:`experiment_environ` is the environment jobs inherit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REDACTED = "<redacted>"

# ---- names ---------------------------------------------------------------------------------------
_SECRET_WORDS = frozenset({
    "KEY", "APIKEY", "TOKEN", "SECRET", "SECRETS", "PASSWORD", "PASSWD", "PASSPHRASE",
    "CREDENTIAL", "CREDENTIALS", "CREDS", "AUTH", "AUTHORIZATION",
})
# one word glued to a secret word: AUTHTOKEN, clientsecret, DBPASSWORD, XAPIKEY (not MONKEY, HOTKEY)
_SECRET_ENDINGS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "APIKEY", "ACCESSKEY", "SECRETKEY", "PRIVATEKEY")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+")


def is_secret(name: str) -> bool:
    """Whether a name (an environment variable, a config key, a log line's label) looks secret."""
    for word in _WORD_SPLIT.split(_CAMEL.sub(r"\1_\2", str(name))):
        word = word.upper().rstrip("0123456789")
        if word in _SECRET_WORDS or (len(word) > 6 and word.endswith(_SECRET_ENDINGS)):
            return True
    return False


# ---- the orchestrator's own credentials -------------------------------------------------------------
# The Anthropic SDK reads its key, token, base URL, custom headers... from ANTHROPIC_*: all of it is
# the LLM proposer's. MLflow's client logs in to a tracking server with MLFLOW_TRACKING_*; the SkyPilot
# client to its API server with a service-account token. An experiment that needs one of them gets
# it only by naming it in target.env.
ORCHESTRATOR_CREDENTIAL_PREFIXES = ("ANTHROPIC_",)
ORCHESTRATOR_CREDENTIALS = frozenset({
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME",
    "SKYPILOT_SERVICE_ACCOUNT_TOKEN",
})


def is_orchestrator_credential(name: str) -> bool:
    return name in ORCHESTRATOR_CREDENTIALS or name.startswith(ORCHESTRATOR_CREDENTIAL_PREFIXES)


def experiment_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment an experiment inherits: this process's (or ``environ``), less the
    orchestrator's own credentials. Everything else passes (training may need ``HF_TOKEN``)."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not is_orchestrator_credential(k)}


# ---- values --------------------------------------------------------------------------------------
MIN_SECRET_CHARS = 4  # shorter values are redacted only where a secret name labels them
_LONG = 8  # values this long are redacted wherever they appear, even inside a longer word
_NOT_A_SECRET = re.compile(
    r"(?i)[-+]?(?:\d[\d,_]*)?\.?\d+(?:e[-+]?\d+)?%?|true|false|yes|no|on|off|none|null|nan|[-+]?inf|"
    + re.escape(REDACTED)
)


def _plain(value: str) -> bool:
    """A number or a flag (``32768``, ``1e-3``, ``true``, ``None``): never a secret's value."""
    return _NOT_A_SECRET.fullmatch(value.strip()) is not None


def _findable(value: str) -> bool:
    """Worth looking for in text: at least 4 characters, and not a plain number or flag (a
    numeric value only from 8 digits on: ``1000`` is everywhere in a log)."""
    return len(value) >= MIN_SECRET_CHARS and (len(value) >= _LONG or not _plain(value))


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The values of ``env``'s secret-named entries that are worth looking for in text."""
    return [v for k, v in ((str(k), str(v).strip()) for k, v in env.items()) if is_secret(k) and _findable(v)]


def scrub_values(text: str, values: Iterable[str] = ()) -> str:
    """Redact every known secret value in ``text``: the secret-named environment variables' and
    ``values``. A short value (under 8 characters, ``hunter2``) only as a whole word, so ``pass``
    does not eat ``password``; a long one anywhere."""
    known = {v for v in (*secret_values(os.environ), *(str(v).strip() for v in values)) if _findable(v)}
    for value in sorted(known, key=len, reverse=True):  # a value containing another goes first
        if len(value) >= _LONG:
            text = text.replace(value, REDACTED)
        elif value in text:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", REDACTED, text)
    return text


# ---- text ----------------------------------------------------------------------------------------
# a value: quoted whole, or up to a space, quote, separator or closing bracket
_VALUE = r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s'"`,;&)}\]]+)"""
# `API_KEY=abc`, `password: abc`, `"api_key": "abc"`, `api_key='abc'`, `x-api-key: abc`
_ASSIGNMENT = re.compile(rf"""(?P<name>(?<![\w.])[A-Za-z_][\w.-]*)(?P<sep>['"]?[ \t]*[=:][ \t]*){_VALUE}""")
# `--api-key abc`, `-token abc` (the `=` form is an assignment)
_FLAG = re.compile(rf"""(?P<dash>(?<![\w-])--?)(?P<name>[A-Za-z][\w-]*)(?P<sep>[ \t]+){_VALUE}""")
# `Bearer <token>` anywhere; `Authorization: <scheme> <credentials>` (Basic, Digest, Token...)
_BEARER = re.compile(r"(?i)\b(?P<head>bearer[ \t]+)[A-Za-z0-9._~+/=-]{8,}")
_AUTH_HEADER = re.compile(r"""(?i)(?P<head>\bauthorization['"]?[ \t]*[=:][ \t]*['"]?(?:[A-Za-z]+[ \t]+)?)[^\s'"]+""")
_SCHEME_WORD = re.compile(r"(?i)bearer|basic|digest|token")  # `Authorization: Basic <redacted>` stays readable
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+):[^/\s@]+@")


def _redact_labelled(m: re.Match[str]) -> str:
    value = m["value"]
    quote = value[0] if len(value) > 1 and value[0] in "'\"" else ""
    bare = value[1:-1] if quote else value
    if not is_secret(m["name"]) or _plain(bare) or bare.startswith("-") or _SCHEME_WORD.fullmatch(bare):
        return m[0]
    return m[0][: m.start("value") - m.start()] + f"{quote}{REDACTED}{quote}"


def scrub(text: str, values: Iterable[str] = ()) -> str:
    """Redact secrets written inside free text: a log tail, a failure reason, a command, a tag.

    ``NAME=value``, ``NAME: value`` and ``--name value`` where NAME looks secret (:func:`is_secret`)
    and the value is not a plain number or flag; ``Bearer <token>``; URL passwords; and the known
    secret values (:func:`scrub_values`: the environment's and ``values``, e.g. ``target.env``'s).
    Names are kept: ``MY_DB_PASSWORD=<redacted>``.
    """
    if not text:
        return text
    text = scrub_values(text, values)
    text = _BEARER.sub(lambda m: m["head"] + REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: m["head"] + REDACTED, text)
    text = _ASSIGNMENT.sub(_redact_labelled, text)
    text = _FLAG.sub(_redact_labelled, text)
    return _URL_PASSWORD.sub(lambda m: f"{m[1]}:{REDACTED}@", text)


def redact_nested(value: Any, values: Iterable[str] = ()) -> Any:
    """A config (nested mappings and lists) fit to be written down: the value of a secret-named
    key (a string or a number, ``password: 1234``) is replaced and the key kept, every other string
    is scrubbed (a command with ``--api-key abc``). A secret-named key holding a mapping is no
    secret itself (a space parameter ``num_key_value_heads: {low: 1, high: 8}``): its entries are
    judged by their own names. Mappings come back as dicts, tuples as lists; the input is not changed."""
    return _redact(value, False, tuple(values))


def _redact(value: Any, secret_key: bool, values: tuple[str, ...]) -> Any:
    if isinstance(value, Mapping):
        return {k: _redact(v, is_secret(str(k)), values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, secret_key, values) for v in value]  # `api_keys: [a, b]`: each one
    if secret_key and isinstance(value, str | int | float) and not isinstance(value, bool) and value != "":
        return REDACTED
    return scrub(value, values) if isinstance(value, str) else value


# ---- files at rest -------------------------------------------------------------------------------
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def create_private_file(path: Path) -> None:
    """Create ``path`` empty, readable and writable by the user only, unless it exists (its mode is
    then left as the user set it). SQLite gives a database's -wal, -shm and -journal files the mode
    of the database itself, so creating the database this way before connecting covers them."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        return
    os.chmod(path, PRIVATE_FILE_MODE)  # O_CREAT's mode is narrowed by the umask, never widened: be exact


def create_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with the leaf readable by the user only, unless it exists."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, PRIVATE_DIR_MODE)
