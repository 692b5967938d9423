"""Settings for the type checker only: mypy's Django plugin loads the app from them.

The example itself configures Django in code (``setup.py``), with the same app.
"""

SECRET_KEY = "flplatform-example-not-secret"  # an example, never deployed
INSTALLED_APPS = ["flplatform"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
