"""Settings for mypy's Django plugin only: every app whose models the type checker sees."""

SECRET_KEY = "flnotify-typing-not-secret"
INSTALLED_APPS = ["flnotify.contrib.django", "flhost", "flplatform"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
