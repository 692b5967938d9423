#!/usr/bin/env python
"""Django's command-line utility for the example FL platform.

python manage.py migrate --run-syncdb
python manage.py start_round <training-id>
"""

from __future__ import annotations

import sys

from django.core.management import execute_from_command_line
from flplatform.setup import setup

if __name__ == "__main__":
    setup()
    execute_from_command_line(sys.argv)
