"""``tune``'s study storage: any RDB URL Optuna takes (SQLite by default), opened so that workers
starting together on a new database do not trip over each other's table creation, with one
``UserError`` line for a URL that cannot be used."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emotions_pl.errors import UserError


def shown_url(url: str) -> str:
    """The storage URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """Workers on one SQLite file take turns creating its tables (each would insert the schema version)."""
    database = url.split(":///", 1)[1] if url.startswith("sqlite:///") else ""
    if not database or database == ":memory:" or not Path(database).parent.is_dir():
        yield  # nothing to share, or a folder sqlite will name in its own error
        return
    import fcntl

    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# Two workers creating one server database's tables at once: the loser sees one of these and retries.
_RACE_WORDS = ("already exists", "locked", "UNIQUE constraint", "Duplicate entry", "duplicate key")


def open_storage(url: str) -> Any:
    """An optuna RDB storage; a URL that cannot be used is one ``UserError`` line."""
    import optuna
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # workers wait for each other's writes
    last: Exception | None = None
    for attempt in range(3):
        try:
            # heartbeats: a dead worker's trial fails when the next worker starts, and runs again
            # with the same params (a killed session or machine loses that trial's progress, not its point)
            with warnings.catch_warnings(), _creation_lock(url):
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=60,
                    grace_period=180,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=1
                    ),
                )
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as error:
            last = error
            if not any(word in str(error) for word in _RACE_WORDS):
                break
            time.sleep(1 + attempt)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
            last = error
            break
    reason = str(getattr(last, "orig", None) or last).strip().splitlines()[0]
    if isinstance(last, ImportError):
        reason = f"the database driver is not installed ({reason})"
    raise UserError(f"--storage {shown_url(url)}: {reason}")
