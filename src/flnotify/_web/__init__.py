"""HTTP app plumbing (ASGI, WSGI, answers) shared by ``receiving`` and ``mailbox``."""
