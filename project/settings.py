"""The only settings file: every value comes from the environment with a safe local default."""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


# DEBUG is on by default only for a local checkout, which is recognised by having no SECRET_KEY.
SECRET_KEY = os.environ.get("SECRET_KEY", "")
DEBUG = env_bool("DEBUG", default=not SECRET_KEY)
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-local-development-key-never-used-in-production"  # noqa: S105 (DEBUG only)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    # daphne first so that `runserver` serves ASGI and streams.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    "chat",
]

# Under ASGI the run of Django's own middleware from SecurityMiddleware to XFrameOptionsMiddleware runs in
# one thread hop per request half (project/tuning/middleware.py); keep other middleware outside that run.
MIDDLEWARE = [
    "chat.csp.csp_middleware",
    "chat.streaming.admission.admission_middleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "chat.request_size.RequestSizeMiddleware",  # before the CSRF check reads a too-large body
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "chat.timezone.TimezoneMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "chat.streaming.admission.DatabaseBusyMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.context_processors.chat_flags",
            ],
        },
    },
]

# conn_max_age=0: under ASGI every request runs in a new thread context, so persistent
# connections would leak rather than be reused.
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=0, conn_health_checks=False
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Streams checkpoint while requests read; WAL and a busy timeout keep SQLite from "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test-db.sqlite3")}
# PostgreSQL through a psycopg connection pool (psycopg-pool; DATABASE_POOL_SIZE=0 turns it off). conn_max_age
# stays 0: a request's "close" returns its connection to the pool. Measured (bench/RESULTS.md): without it
# every request in flight opens its own connection, and under load PostgreSQL's 100 ran out (HTTP 500s);
# with it connections are bounded and reused, and a request beyond the pool waits for one instead.
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 20)
# Seconds a request waits for a pooled connection before it is answered 503 with Retry-After
# (chat.streaming.admission): psycopg-pool's own 30 s outlasts a PaaS router's wait for a response.
DATABASE_POOL_TIMEOUT = env_float("DATABASE_POOL_TIMEOUT", 10)
if DATABASE_POOL_SIZE and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(2, DATABASE_POOL_SIZE),
        "max_size": DATABASE_POOL_SIZE,
        "timeout": DATABASE_POOL_TIMEOUT,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
# channels-redis waits for a worker's messages in blocking reads of 5 s (RedisChannelLayer.brpop_timeout, not
# configurable). redis-py's default socket timeout is also 5 s, so an idle read raced the server's empty answer,
# lost, and the receive loop logged a traceback and paused a second, deaf to stops. The socket
# timeout must outlast the blocking read (3x); keepalive and a health check still find a dead connection.
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 15,
                        "socket_connect_timeout": 5,
                        "socket_keepalive": True,
                        "health_check_interval": 30,
                    }
                ]
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Sessions are read from the cache, falling back to the database: one query fewer for each of a reply's two
# requests, both before its first token (docs/decisions/0019). The cache is shared exactly as widely as the
# processes are: Redis when REDIS_URL is set (several workers, so a logout anywhere ends the session
# everywhere), this process's memory when it is not (the in-memory channel layer means one process).
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "streamchat",
        }
    }
else:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "OPTIONS": {"MAX_ENTRIES": 20_000}}
    }
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# In DEBUG whitenoise serves straight from the app and project static folders (no collectstatic),
# which is also how the test servers get htmx.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Production security: on whenever DEBUG is off. SECURE_SSL_REDIRECT alone can be switched off to
# run production mode over plain local HTTP (behind a PaaS router that terminates TLS it stays on).
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = SECURE_SSL_REDIRECT
    CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # httpx logs every request URL at INFO; keep it quiet so nothing provider-related is echoed.
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}

# --- streamchat -------------------------------------------------------------------------------

OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
# Ask for OpenRouter's usage accounting (`"usage": {"include": true}`, the cost in the last chunk); only OpenRouter
# knows the field, and a strict server may reject it, so it is on by default for OpenRouter alone (decision 0036).
OPENAI_USAGE_ACCOUNTING = env_bool(
    "OPENAI_USAGE_ACCOUNTING", (urlsplit(OPENAI_BASE_URL).hostname or "") in {"openrouter.ai", "www.openrouter.ai"}
)
ANTHROPIC_API_KEY = os.environ.get("ANTHROPIC_API_KEY", "")
ANTHROPIC_BASE_URL = os.environ.get("ANTHROPIC_BASE_URL", "https://api.anthropic.com")


def default_chat_models() -> str:
    models = ["demo:demo"]
    if OPENAI_API_KEY:
        models.append("openai:gpt-4o-mini")
    if ANTHROPIC_API_KEY:
        models.append("anthropic:claude-sonnet-4-5")
    return ",".join(models)


CHAT_MODELS = env_list("CHAT_MODELS", default_chat_models())
CHAT_DEFAULT_MODEL = os.environ.get("CHAT_DEFAULT_MODEL") or CHAT_MODELS[0]
CHAT_IDLE_TIMEOUT = env_float("CHAT_IDLE_TIMEOUT", 60)
# Bytes that keep coming without completing an event are cut after this long, as silence is after the idle timeout.
CHAT_PROGRESS_TIMEOUT = env_float("CHAT_PROGRESS_TIMEOUT", CHAT_IDLE_TIMEOUT)
# One upstream event's bytes (so each of its lines too): far above any real event, and a bound on a worker's buffer.
CHAT_MAX_EVENT_BYTES = env_int("CHAT_MAX_EVENT_BYTES", 4 * 1024 * 1024)
CHAT_MAX_DURATION = env_float("CHAT_MAX_DURATION", 600)
CHAT_CONNECT_TIMEOUT = env_float("CHAT_CONNECT_TIMEOUT", 10)
CHAT_MAX_RETRIES = env_int("CHAT_MAX_RETRIES", 2)
CHAT_RETRY_BASE_DELAY = env_float("CHAT_RETRY_BASE_DELAY", 1.0)
CHAT_RETRY_MAX_DELAY = env_float("CHAT_RETRY_MAX_DELAY", 20.0)
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 32000)
CHAT_MAX_TOKENS = env_int("CHAT_MAX_TOKENS", 4096)
CHAT_HEARTBEAT_SECONDS = env_float("CHAT_HEARTBEAT_SECONDS", 15)
CHAT_CHECKPOINT_SECONDS = env_float("CHAT_CHECKPOINT_SECONDS", 1.0)
# A `streaming` row whose last checkpoint is older than this belongs to a dead process.
CHAT_INTERRUPTED_AFTER = env_float("CHAT_INTERRUPTED_AFTER", 30)
# "aiohttp" (httpx API over aiohttp's transport, measured fastest) or "httpx" (httpx's own).
CHAT_HTTP_TRANSPORT = os.environ.get("CHAT_HTTP_TRANSPORT", "aiohttp")
CHAT_MAX_CONNECTIONS = env_int("CHAT_MAX_CONNECTIONS", 2000)
# The framework patches of project/tuning/ (its docstring lists them); 0 serves stock Django, which is slower
# under load but must behave the same: CI runs the whole suite once that way.
CHAT_TUNING = env_bool("CHAT_TUNING", True)
# Perf knob (project/tuning/switch_interval.py): sys.setswitchinterval, in seconds; 0 keeps Python's 5 ms.
CHAT_SWITCH_INTERVAL = env_float("CHAT_SWITCH_INTERVAL", 0)
# A reply nobody watches (every tab closed) is cancelled after this many seconds; 0 cancels it the
# moment the last watcher leaves. Long enough to survive a refresh or a network switch.
CHAT_UNWATCHED_TIMEOUT = env_float("CHAT_UNWATCHED_TIMEOUT", 30)
# On SIGTERM, running replies get this long to finish before they are interrupted (PaaS allow 30 s).
CHAT_SHUTDOWN_GRACE = env_float("CHAT_SHUTDOWN_GRACE", 20)
CHAT_FOLLOWER_LEASE = env_float("CHAT_FOLLOWER_LEASE", 15)
# Demo model pacing, seconds per token; tests set it to 0.
CHAT_DEMO_INTERVAL = env_float("CHAT_DEMO_INTERVAL", 0.03)
# In DEBUG `make run` creates this local account; production never has a default account.
CHAT_DEMO_USER = os.environ.get("CHAT_DEMO_USER", "demo")
# Spending and abuse limits (chat/costs/limits.py). The budget is USD per user per calendar month (UTC),
# a string read as a Decimal; unset means no limit, and a user's own SpendingLimit (admin) wins over it.
CHAT_MONTHLY_BUDGET_USD = os.environ.get("CHAT_MONTHLY_BUDGET_USD", "").strip() or None


def budget_warning_at(raw: str | None) -> float:
    """The fraction of a budget spent at which the composer warns; a bad value stops the start, not a page."""
    try:
        value = float(raw or 0.8)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:  # NaN fails this too
        raise ImproperlyConfigured(
            f"CHAT_BUDGET_WARNING_AT must be a fraction above 0 and at most 1 (0.8 warns at 80% of the budget), "
            f"not {raw!r}"
        )
    return value


# The composer and the Usage page warn once this fraction of the monthly budget is spent.
CHAT_BUDGET_WARNING_AT = budget_warning_at(os.environ.get("CHAT_BUDGET_WARNING_AT"))

# Per user: replies being written at once, and replies started per minute (a send, Retry, Regenerate
# or Continue each starts one); 0 switches a limit off.
CHAT_MAX_CONCURRENT_REPLIES = env_int("CHAT_MAX_CONCURRENT_REPLIES", 3)
# Per worker (chat/streaming/admission.py): past either, a new reply is refused at once with 503 and Retry-After.
# The event loop's lag in seconds above which the worker is full (0: off), and a cap on the replies
# it writes at once (0: none; set it to the capacity `python -m bench` measures on your machine).
CHAT_MAX_LAG = env_float("CHAT_MAX_LAG", 5)
CHAT_MAX_STREAMS = env_int("CHAT_MAX_STREAMS", 0)
# Refuse new replies when a request would wait longer than this for a database connection (0: never):
# by default the wait after which it would be refused anyway. Measured (docs/decisions/0013): half of it
# refused 380 of 804 replies at C=500 (47 %) that the queue would have served.
CHAT_MAX_DB_WAIT = env_float("CHAT_MAX_DB_WAIT", DATABASE_POOL_TIMEOUT)
CHAT_MESSAGES_PER_MINUTE = env_int("CHAT_MESSAGES_PER_MINUTE", 20)
