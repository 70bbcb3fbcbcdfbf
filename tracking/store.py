"""Where runs are stored: the tracking URI, the artifact root, experiments, retries.

Defaults (docs/design.md#stores-and-defaults): with ``MLFLOW_TRACKING_URI`` unset, the store is
the SQLite file ``<repo>/mlflow.db`` and artifacts go under ``<repo>/mlruns`` (or
``$THREE_REGIME_ARTIFACT_ROOT``). The URI is always set explicitly, never left to MLflow's
implicit default, and exported so that worker processes inherit it.

Waits are bounded: a command checks its store before any compute (:func:`ensure_reachable`),
later calls retry connection errors (:func:`with_retries`), each pause printed as one line,
and both give up after :func:`store_timeout` seconds (``--store-timeout``,
``$THREE_REGIME_STORE_TIMEOUT``, default 30) with an error that says what to check.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage, Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_ALREADY_EXISTS,
    TEMPORARILY_UNAVAILABLE,
    ErrorCode,
)

from tracking import keys
from tracking.cli import DEFAULT_STORE_TIMEOUT, ENV_STORE_TIMEOUT

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_ARTIFACT_ROOT = "THREE_REGIME_ARTIFACT_ROOT"
MAX_WAIT = 10.0                  # longest pause between two attempts
REPO_ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class TrackingUnavailableError(RuntimeError):
    """The tracking store could not be reached after retrying."""


class StoreUnreachableError(TrackingUnavailableError):
    """A store (tracking store, Optuna storage, Dask scheduler) did not answer within the
    bounded wait; the message names it (password redacted) and says what to check."""


def default_tracking_uri() -> str:
    """The store used when nothing is configured: ``sqlite:///<repo>/mlflow.db``."""
    return f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def configure(tracking_uri: str | None = None) -> str:
    """Set the tracking URI explicitly and return it.

    Order: the argument, then ``$MLFLOW_TRACKING_URI``, then :func:`default_tracking_uri`.
    The chosen URI is also written to ``$MLFLOW_TRACKING_URI`` so that subprocesses (workers,
    ``mlflow run``) use the same store.
    """
    uri = tracking_uri or os.environ.get(ENV_TRACKING_URI) or default_tracking_uri()
    os.environ[ENV_TRACKING_URI] = uri
    bound_client_timeouts(uri)
    _quiet_sql_error_tracebacks()
    # With a tracking server MLflow prints "View run <name> at: <URI>/..." for every run it
    # ends: two lines per cell, and the URI's password with them (http://user:pw@host).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    mlflow.set_tracking_uri(uri)
    return uri


def get_client() -> MlflowClient:
    """A client on the configured store (calls :func:`configure` if no URI is set yet)."""
    if not mlflow.is_tracking_uri_set():
        configure()
    return MlflowClient()


def artifact_root() -> str:
    """Root of local artifacts: ``$THREE_REGIME_ARTIFACT_ROOT`` or ``<repo>/mlruns``.

    Returns a URI (``file:///...`` for a local path; a remote URI such as ``s3://...`` as given).
    """
    root = os.environ.get(ENV_ARTIFACT_ROOT) or str(REPO_ROOT / "mlruns")
    if "://" in root:
        return root.rstrip("/")
    return Path(root).expanduser().resolve().as_uri()


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def init_experiment(name: str, description: str | None = None) -> str:
    """Create the experiment ``name`` if missing (restore it if deleted); return its id.

    Local stores put its artifacts under ``<artifact_root()>/<name>``; a tracking server
    chooses the location itself. ``description`` becomes the note shown in the MLflow UI.

    Note: call it once, from the ``init`` step, before workers start: it tolerates a
    concurrent creation of the same experiment, but a fresh SQLite database created by several
    processes at once can still race inside MLflow's schema migration.
    """
    client = get_client()
    experiment = with_retries(client.get_experiment_by_name, name)
    if experiment is None:
        location = None if _is_server(mlflow.get_tracking_uri()) else (
            f"{artifact_root()}/{_safe_name(name)}")
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except MlflowException as e:
            # another process created it between our lookup and our create
            if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == LifecycleStage.DELETED:
            client.restore_experiment(experiment_id)
    if description is not None:
        client.set_experiment_tag(experiment_id, keys.NOTE, description)
    return experiment_id


def experiment_id(name: str, client: MlflowClient | None = None) -> str:
    """Id of the active experiment ``name``.

    Raises:
        ValueError: no active experiment has that name; the message lists those that exist.
    """
    client = client or get_client()
    experiment = with_retries(client.get_experiment_by_name, name)
    if experiment is None or experiment.lifecycle_stage != LifecycleStage.ACTIVE:
        names = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
        raise ValueError(
            f"unknown experiment {name!r} in {redact_uri(mlflow.get_tracking_uri())}; "
            f"existing experiments: {', '.join(names) or '(none)'}")
    return experiment.experiment_id


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "",
                    order_by: list[str] | None = None) -> list[Run]:
    """Every active run matching ``filter_string``, following the pages of ``search_runs``."""
    runs: list[Run] = []
    token = None
    while True:
        page = with_retries(client.search_runs, experiment_ids, filter_string,
                            ViewType.ACTIVE_ONLY, 1000, order_by, token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_finished_run(client: MlflowClient, experiment_id: str, kind: str) -> Run | None:
    """The most recently started FINISHED run tagged ``run_kind`` = ``kind``, or None."""
    page = with_retries(
        client.search_runs, [experiment_id],
        f"tags.{keys.RUN_KIND} = '{kind}' and attributes.status = 'FINISHED'",
        ViewType.ACTIVE_ONLY, 1, ["attributes.start_time DESC"])
    return page[0] if page else None


def redact_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (safe to print or log)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def redact_text(text: str, uri: str) -> str:
    """``text`` (an error message) with the password of ``uri``, if any, replaced by ``***``."""
    password = urlsplit(uri).password
    return text.replace(password, "***") if password else text


# -- bounded waits ------------------------------------------------------------------------
# A command checks its stores before any compute (ensure_reachable), and every later call
# retries connection errors visibly (with_retries); both give up after store_timeout()
# seconds with one error that names the store and what to check.

def store_timeout(seconds: float | None = None) -> float:
    """How long to wait for a store: ``seconds``, else ``$THREE_REGIME_STORE_TIMEOUT``, else 30.

    Raises:
        ValueError: not a number of seconds > 0.
    """
    if seconds is None:
        text = os.environ.get(ENV_STORE_TIMEOUT, "").strip()
        if not text:
            return DEFAULT_STORE_TIMEOUT
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"{ENV_STORE_TIMEOUT}={text!r}: must be a number of seconds > 0") \
                from None
        where = ENV_STORE_TIMEOUT
    else:
        where = "the store timeout"
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{where}={seconds!r}: must be a number of seconds > 0")
    return float(seconds)


def set_store_timeout(seconds: float | None) -> float:
    """Export ``seconds`` (if given) as ``$THREE_REGIME_STORE_TIMEOUT`` for this process and its
    workers; return the timeout now in force."""
    if seconds is not None:
        os.environ[ENV_STORE_TIMEOUT] = repr(store_timeout(seconds))
    return store_timeout()


def bound_client_timeouts(uri: str) -> None:
    """Bound the clients' own silent waits for ``uri`` (environment defaults; a value the user
    set is kept).

    MLflow retries an HTTP call 7 times over minutes, and waits up to 120 s for an answer,
    before the project's visible retries even start; libpq waits for a PostgreSQL host that
    does not answer as long as TCP does (about two minutes).
    """
    if _is_server(uri):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    elif uri.startswith("postgres"):
        os.environ.setdefault("PGCONNECT_TIMEOUT", "10")


def _drop_sql_error_traceback(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("SQLAlchemy database error")


def _quiet_sql_error_tracebacks() -> None:
    """MLflow logs a full traceback for every database error before it raises it as
    TEMPORARILY_UNAVAILABLE: forty lines per attempt while :func:`with_retries` reports each
    attempt in one line (and the raised error keeps the message)."""
    logger = logging.getLogger("mlflow.store.db.utils")
    if _drop_sql_error_traceback not in logger.filters:
        logger.addFilter(_drop_sql_error_traceback)


class NoAnswer(Exception):
    """Raised by a probe of :func:`wait_until_answers`: ``reason`` is shown as it is;
    ``permanent``: waiting will not help, the wait ends at once."""

    def __init__(self, reason: str, permanent: bool = False):
        super().__init__(reason)
        self.permanent = permanent


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


_RETRY_HINT = (f"to wait longer, pass --store-timeout SECONDS or set {ENV_STORE_TIMEOUT} "
               f"(default {DEFAULT_STORE_TIMEOUT:.0f} s)")


def store_hints(uri: str) -> str:
    """What to check when ``uri`` (a tracking URI or an Optuna storage URL) does not answer."""
    parts = urlsplit(uri)
    host, port = parts.hostname or "localhost", parts.port
    if _is_server(uri):
        port = port or (443 if parts.scheme == "https" else 80)
        return (f"is the tracking server started (mlflow server ... --port {port})? is {port} "
                "the port it listens on? a server for other machines must listen beyond "
                "loopback (mlflow server --host 0.0.0.0); is a firewall or proxy in the way?")
    if uri.startswith("sqlite"):
        return "does the SQLite file's folder exist and can this user write there?"
    if parts.scheme.startswith(("postgres", "mysql", "mariadb", "mssql")):
        name = parts.path.lstrip("/") or "NAME"
        check = f"pg_isready -h {host} -p {port or 5432}" if uri.startswith("postgres") \
            else f"port {port or 'default'}"
        create = f" (createdb -h {host} {name})" if uri.startswith("postgres") else ""
        return (f"is the database server running on {host} and listening there ({check})? "
                f"does the database {name} exist{create}? are the user and password right?")
    return "is the store's service running, and is the address right?"


def unreachable_message(what: str, uri: str, attempts: int, seconds: float, reason: str,
                        hints: str | None = None, permanent: bool = False) -> str:
    """The one error a command ends with when ``what`` at ``uri`` did not answer
    (``permanent``: it answered, but waiting would not help)."""
    if permanent:
        return (f"{what} {redact_uri(uri)} cannot be used: {reason}. "
                f"Check: {hints or store_hints(uri)}")
    return (f"{what} {redact_uri(uri)} unreachable after {attempts} attempt"
            f"{'s' if attempts != 1 else ''} over {_seconds(seconds)}: {reason}. "
            f"Check: {hints or store_hints(uri)} ({_RETRY_HINT})")


def wait_until_answers(probe: Callable[[float], None], what: str, uri: str,
                       timeout_s: float | None = None, hints: str | None = None) -> None:
    """Call ``probe(seconds)`` until it returns, for at most ``timeout_s`` (:func:`store_timeout`).

    ``probe`` raises on failure and must itself give up within the seconds it is given. Each
    pause prints one line on stderr (``what``, ``uri`` without its password, the attempt, the
    next pause). A failure waiting cannot cure (a missing folder, database or driver) ends the
    wait at once.

    Raises:
        StoreUnreachableError: no answer within the bound; names the store and what to check.
    """
    limit = store_timeout(timeout_s)
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        left = limit - (time.monotonic() - start)
        try:
            probe(min(max(left, 1.0), 5.0))
            return
        except NoAnswer as e:
            reason, permanent = str(e), e.permanent
        except Exception as e:  # noqa: BLE001 - any failure of the probe is reported
            reason, permanent = _short_reason(e, uri), False
        elapsed = time.monotonic() - start
        pause = min(2.0 ** (attempt - 1), MAX_WAIT, limit - elapsed)
        if permanent or pause <= 0:
            raise StoreUnreachableError(
                unreachable_message(what, uri, attempt, elapsed, reason, hints, permanent))
        _say(f"waiting for the {what} {redact_uri(uri)}: attempt {attempt} failed ({reason}); "
             f"next attempt in {_seconds(pause)}, giving up after {_seconds(limit)}")
        time.sleep(pause)


def ensure_reachable(uri: str | None = None, timeout_s: float | None = None,
                     what: str = "tracking store") -> None:
    """Check that the store at ``uri`` answers (default: the configured tracking URI).

    Call it before any compute. Writes nothing: an HTTP server gets one GET ``/health`` (any
    answer but a gateway error counts); a database gets a connection and ``SELECT 1``; a
    SQLite file that does not exist yet is fine (MLflow creates it) but its folder must exist.
    Other URIs (a local folder, ``databricks``) are not probed.

    Raises:
        StoreUnreachableError: no answer within :func:`store_timeout` seconds (one line on
            stderr per pause), or at once when waiting cannot help.
    """
    uri = uri or mlflow.get_tracking_uri()
    bound_client_timeouts(uri)
    if _is_server(uri):
        probe = _http_probe(uri)
    elif uri.startswith("sqlite"):
        probe = _sqlite_probe(uri)
    elif "://" in uri and not uri.startswith(("file:", "databricks")):
        probe = _sql_probe(uri)
    else:
        return
    wait_until_answers(probe, what, uri, timeout_s)


def _http_probe(uri: str) -> Callable[[float], None]:
    import requests

    url = uri.rstrip("/") + "/health"
    verify: bool | str = True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        verify = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]

    def probe(seconds: float) -> None:
        try:
            answer = requests.get(url, timeout=(seconds, seconds), verify=verify,
                                  allow_redirects=True)
        except requests.exceptions.SSLError as e:
            raise NoAnswer(f"TLS error: {_short_reason(e, uri)}", permanent=True) from e
        except requests.exceptions.InvalidURL as e:
            raise NoAnswer(f"invalid URL: {_short_reason(e, uri)}", permanent=True) from e
        except requests.exceptions.ReadTimeout as e:
            raise NoAnswer(f"connected, but no answer within {_seconds(seconds)}") from e
        except requests.exceptions.RequestException as e:
            raise NoAnswer(_short_reason(e, uri)) from e
        if answer.status_code in (502, 503, 504):   # a proxy answers, the server behind not
            raise NoAnswer(f"HTTP {answer.status_code} {answer.reason}")

    return probe


def _sqlite_probe(uri: str) -> Callable[[float], None]:
    import sqlite3

    from sqlalchemy.engine import make_url

    database = make_url(uri).database

    def probe(seconds: float) -> None:
        if not database or database == ":memory:":
            return
        path = Path(database).expanduser()
        folder = path.parent.resolve()
        if not folder.is_dir():
            raise NoAnswer(f"the folder {folder} of the SQLite file does not exist "
                            f"(create it: mkdir -p {folder})", permanent=True)
        if not path.exists():
            if not os.access(folder, os.W_OK):
                raise NoAnswer(f"cannot create {path.name} in {folder} (no write permission)",
                                permanent=True)
            return              # MLflow creates it
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=seconds)
            try:
                db.execute("PRAGMA schema_version").fetchone()
            finally:
                db.close()
        except sqlite3.OperationalError as e:
            raise NoAnswer(f"{path}: {e}", permanent="locked" not in str(e)) from e
        except sqlite3.DatabaseError as e:
            raise NoAnswer(f"{path}: {e}", permanent=True) from e

    return probe


# what waiting cannot cure: a typo in the database, user, password or host name
_PERMANENT_SQL = re.compile(r"does not exist|authentication failed|password|unknown database|"
                            r"access denied|could not translate host name|no such|"
                            r"name or service not known|role .* does not", re.IGNORECASE)


def _sql_probe(uri: str) -> Callable[[float], None]:
    def probe(seconds: float) -> None:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        try:
            url = sqlalchemy.engine.make_url(uri)
            connect_args = {}
            if url.get_backend_name() in ("postgresql", "mysql", "mariadb"):
                connect_args["connect_timeout"] = max(2, math.ceil(seconds))
            engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)
        except (ImportError, sqlalchemy.exc.ArgumentError) as e:   # no driver, bad URL
            raise NoAnswer(_short_reason(e, uri), permanent=True) from e
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except sqlalchemy.exc.DBAPIError as e:
            reason = _short_reason(e, uri)
            raise NoAnswer(reason, permanent=bool(_PERMANENT_SQL.search(reason))) from e
        finally:
            engine.dispose()

    return probe


def _short_reason(error: BaseException, uri: str = "") -> str:
    """One short line saying why ``error`` happened (the innermost OS reason when there is one),
    without the password of ``uri``."""
    import sqlalchemy.exc

    text = ""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:     # the chain MLflow and requests build
        seen.add(id(e))
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.orig is not None:
            text = str(e.orig)
            break
        match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(e))
        if match:
            text = match.group(1)
            break
        if isinstance(e, TimeoutError | OSError) and str(e):
            text = str(e)
            break
        e = e.__cause__ or e.__context__
    text = text or str(error) or type(error).__name__
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # psycopg: "connection to server at ... failed: FATAL:  database "x" does not exist"
    line = "; ".join(lines[:2]) if lines else type(error).__name__
    line = re.sub(r"\s+", " ", line)
    line = redact_text(line, uri) if uri else line
    return line if len(line) <= 200 else line[:197] + "..."


_RETRY_CODES = re.compile(r"failed with error code (429|502|503|504)\b")


def _is_connection_error(error: BaseException) -> bool:
    import requests
    import sqlalchemy.exc

    transient = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                 sqlalchemy.exc.OperationalError)
    transient_codes = {ErrorCode.Name(TEMPORARILY_UNAVAILABLE),
                       ErrorCode.Name(REQUEST_LIMIT_EXCEEDED)}
    seen = set()
    # MLflow wraps the real cause (raise ... from e, or raise inside except): walk the chain.
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, transient):
            return True
        if isinstance(error, MlflowException) and (
                error.error_code in transient_codes or _RETRY_CODES.search(str(error))):
            return True
        error = error.__cause__ or error.__context__
    return False


def with_retries(fn: Callable[..., T], *args, attempts: int | None = None,
                 backoff: float = 0.5, **kwargs) -> T:
    """Call ``fn(*args, **kwargs)``, retrying connection errors with exponential backoff.

    Waits ``backoff * 2**(k-1)`` seconds (at most 10) after the k-th failure, printing one
    line on stderr per wait, until ``attempts`` tries, or, by default, until
    :func:`store_timeout` seconds have passed. Other errors propagate at once.

    Raises:
        TrackingUnavailableError: still failing; names the store URI (password redacted) and
            what to check.
    """
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    limit = store_timeout() if attempts is None else math.inf
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not _is_connection_error(e):
                raise
            error = e
        uri = mlflow.get_tracking_uri()
        left = limit - (time.monotonic() - start)
        if attempt == attempts or left <= 0:
            break
        pause = min(backoff * 2 ** (attempt - 1), MAX_WAIT, left)
        _say(f"tracking store {redact_uri(uri)} did not answer (attempt {attempt}: "
             f"{_short_reason(error, uri)}); retrying in {_seconds(pause)}"
             + (f", giving up after {_seconds(limit)}" if attempts is None else ""))
        time.sleep(pause)
    # the client's own message may repeat the URI, password included (http://user:pw@host)
    raise TrackingUnavailableError(unreachable_message(
        "tracking store", uri, attempt, time.monotonic() - start,
        _short_reason(error, uri))) from error
